"""Projects, members and task set-up done by leads."""

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from labeling.flags import FLAGS
from labeling.models import Membership, Project, Role, Task, TaskCompletion
from labeling.services.importing import task_build

EDITABLE_FIELDS = (
    "name", "guidelines", "k", "allow_ties", "overlap", "agreement_sample_rate",
    "agreement_overlap", "lease_minutes", "flags", "gold_rate", "gold_threshold",
    "gold_min_answers", "per_user_cap",
    "dedup_prefix_chars", "split_train", "split_valid",
)


def _validate(project: Project) -> None:
    errors = {}
    if not project.name or not project.name.strip():
        errors["name"] = ["give the project a name"]
    if not 2 <= project.k <= 9:
        errors["k"] = ["K must be from 2 to 9"]
    if project.overlap < 1:
        errors["overlap"] = ["at least one annotation per task"]
    if not 0 <= project.agreement_sample_rate <= 1:
        errors["agreement_sample_rate"] = ["a share from 0 to 1"]
    if project.agreement_overlap < 1:
        errors["agreement_overlap"] = ["at least one annotation per task"]
    if not 0 <= project.gold_rate <= 1:
        errors["gold_rate"] = ["a share from 0 to 1"]
    if project.gold_threshold is not None and not 0 <= project.gold_threshold <= 1:
        errors["gold_threshold"] = ["a share from 0 to 1, or empty"]
    if project.lease_minutes < 1:
        errors["lease_minutes"] = ["at least one minute"]
    if project.split_train + project.split_valid > 100:
        errors["split_valid"] = ["train and validation shares add up to more than 100%"]
    if not isinstance(project.flags, list) or set(project.flags) - set(FLAGS):
        errors["flags"] = [f"known flags: {', '.join(FLAGS)}"]
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def project_create(*, creator, name: str, **fields) -> Project:
    """Create a project with the creator as its lead."""
    project = _apply(Project(name=name, created_by=creator), fields)
    Membership.objects.create(user=creator, project=project, role=Role.LEAD)
    return project


@transaction.atomic
def project_update(*, project: Project, **fields) -> Project:
    """Change project settings; existing tasks keep their overlap."""
    return _apply(project, fields)


def _apply(project: Project, fields: dict) -> Project:
    for key, value in fields.items():
        if key not in EDITABLE_FIELDS:
            raise ValidationError({key: ["unknown project setting"]})
        setattr(project, key, value)
    _validate(project)
    project.save()
    return project


@transaction.atomic
def membership_add(*, project: Project, username: str, role: str, password: str | None = None):
    """Add a user to the project with a role, creating the account when a password is given.

    Return (membership, created_account).
    """
    if role not in Role.values:
        raise ValidationError({"role": [f"use one of {', '.join(Role.values)}"]})
    username = (username or "").strip()
    if not username:
        raise ValidationError({"username": ["give a username"]})
    User = get_user_model()
    user = User.objects.filter(username=username).first()
    created = False
    if user is None:
        if not password:
            raise ValidationError(
                {"password": ["no such user: give a password to create the account"]}
            )
        user = User(username=username)
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise ValidationError({"password": exc.messages}) from exc
        user.set_password(password)
        user.save()
        created = True
    membership, _ = Membership.objects.update_or_create(
        user=user, project=project, defaults={"role": role}
    )
    return membership, created


@transaction.atomic
def write_prompt_tasks_create(*, project: Project, count: int) -> int:
    """Add ``count`` write-a-prompt tasks to the queue; return how many were made."""
    if not 1 <= count <= 10_000:
        raise ValidationError({"count": ["from 1 to 10,000 at a time"]})
    Task.objects.bulk_create(
        [task_build(project=project, kind=Task.Kind.WRITE_PROMPT) for _ in range(count)]
    )
    return count


@transaction.atomic
def task_set_gold(*, task: Task, ranking: dict | None) -> Task:
    """Mark a rank task as gold with its expected ranking {completion id: rank}, or unmark it."""
    task = Task.objects.select_for_update().get(pk=task.pk)
    if ranking is None:
        task.is_gold, task.gold_ranking = False, None
        task.save(update_fields=["is_gold", "gold_ranking"])
        return task
    if task.kind != Task.Kind.RANK:
        raise ValidationError({"task": ["only ranking tasks can be gold"]})
    ids = set(
        TaskCompletion.objects.filter(task=task).values_list("completion_id", flat=True)
    )
    try:
        cleaned = {int(cid): int(rank) for cid, rank in ranking.items()}
    except (TypeError, ValueError, AttributeError):
        raise ValidationError({"ranking": ["give {completion id: rank}"]}) from None
    if set(cleaned) != ids:
        raise ValidationError({"ranking": ["rank every response of the task exactly once"]})
    if not all(1 <= rank <= len(ids) for rank in cleaned.values()):
        raise ValidationError({"ranking": [f"ranks go from 1 to {len(ids)}"]})
    task.is_gold = True
    task.gold_ranking = {str(cid): rank for cid, rank in cleaned.items()}
    task.save(update_fields=["is_gold", "gold_ranking"])
    return task


def membership_set_active(*, membership: Membership, active: bool, reason: str = "") -> Membership:
    """Pause (with a reason the annotator sees) or reactivate an annotator's work."""
    membership.is_active = active
    membership.paused_reason = "" if active else reason
    membership.save(update_fields=["is_active", "paused_reason"])
    return membership


def membership_set_quota(*, membership: Membership, daily_quota: int | None) -> Membership:
    """Set how many tasks an annotator may submit per day in the project (None: no limit)."""
    if daily_quota is not None and daily_quota < 1:
        raise ValidationError({"daily_quota": ["at least one task a day, or empty"]})
    membership.daily_quota = daily_quota
    membership.save(update_fields=["daily_quota"])
    return membership
