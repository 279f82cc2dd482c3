"""Shared fixtures for the ML core: one tiny model per session, and a clean model cache."""

import shutil

import pytest

from modelhub.ml.loading import clear_model_cache
from modelhub.services.registry import model_register


@pytest.fixture(autouse=True)
def fresh_model_cache():
    """Start and end every test with an empty model cache."""
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def model_root(settings, tmp_path, tiny_model):
    """Return a model root holding a copy of the tiny model (as "tiny"), the only one allowed."""
    root = tmp_path / "models"
    shutil.copytree(tiny_model, root / "tiny")
    settings.MODEL_ROOT = root
    settings.MODEL_REGISTRY_ROOTS = [root]
    return root


@pytest.fixture
def base(project, model_root, alice):
    """Return the tiny model registered as the project's base model."""
    return model_register(project=project, name="tiny", kind="base",
                          path=str(model_root / "tiny"), created_by=alice)
