"""Registering models: validate a save_pretrained directory (safetensors only), record it."""

from pathlib import Path

from django.conf import settings
from django.db import transaction

from modelhub.models import ModelVersion


class RegistrationError(ValueError):
    """A model that cannot be registered, with the reason."""


def _allowed(path: Path) -> bool:
    roots = [Path(root).resolve() for root in settings.MODEL_REGISTRY_ROOTS]
    return any(path == root or root in path.parents for root in roots)


def model_register(*, project, name: str, kind: str, path: str | None = None,
                   hub_id: str | None = None, parent: ModelVersion | None = None,
                   created_by=None, metrics: dict | None = None,
                   training_run_ref: int | None = None,
                   snapshot_ref: int | None = None) -> ModelVersion:
    """Validate a model directory (or download a Hub model) and register it in a project.

    Paths must lie under settings.MODEL_REGISTRY_ROOTS, so an API caller cannot make the
    server read arbitrary directories. Pickle-only checkpoints are refused: loading one
    could run code.
    """
    # transformers (and torch) load on first registration, not in every web process.
    from modelhub.ml.loading import InvalidModel, hub_download, inspect_checkpoint

    name = (name or "").strip()
    if not name:
        raise RegistrationError("a model needs a name")
    if kind not in ModelVersion.Kind.values:
        raise RegistrationError(f"kind must be one of {', '.join(ModelVersion.Kind.values)}")
    if bool(path) == bool(hub_id):
        raise RegistrationError("give either a path or a hub id")
    if parent is not None and parent.project_id != project.pk:
        raise RegistrationError("the parent model belongs to another project")
    if ModelVersion.objects.filter(project=project, name=name).exists():
        raise RegistrationError(f"this project already has a model named {name!r}")
    if hub_id:
        try:
            folder = hub_download(hub_id, Path(settings.MODEL_ROOT) / "hub")
        except (OSError, RuntimeError, ValueError) as error:
            raise RegistrationError(str(error)) from error
    else:
        folder = Path(path).expanduser().resolve()
        if not _allowed(folder):
            roots = ", ".join(str(r) for r in settings.MODEL_REGISTRY_ROOTS)
            raise RegistrationError(
                f"{folder} is outside the model directories this server reads ({roots}); "
                "set LAOSHI_MODEL_REGISTRY_ROOTS to allow another")
    try:
        info = inspect_checkpoint(folder, reward=kind == ModelVersion.Kind.REWARD)
    except InvalidModel as error:  # UnsafeCheckpoint included
        raise RegistrationError(str(error)) from error
    with transaction.atomic():
        return ModelVersion.objects.create(
            project=project, name=name, kind=kind, parent=parent,
            artifact_path=str(folder), hub_id=hub_id or "",
            architecture=info["architecture"], parameter_count=info["parameter_count"],
            is_chat=info["is_chat"], metrics=metrics or {}, created_by=created_by,
            training_run_ref=training_run_ref, snapshot_ref=snapshot_ref,
        )
