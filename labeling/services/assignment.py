"""The annotator queue: claim the next task, expire leases, skip."""

import random
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from labeling.models import Assignment, Task, TaskCompletion

LEASE_SWEEP_BATCH = 500


def leases_expire(*, project_id=None, now=None) -> int:
    """Expire active assignments past their lease and give their slots back; return how many.

    Rows already locked by another sweeper are skipped, and task counters are
    decremented in task-id order, so concurrent sweepers never deadlock or count twice.
    """
    now = now or timezone.now()
    expired = Assignment.objects.filter(state=Assignment.State.ACTIVE, expires_at__lte=now)
    if project_id is not None:
        expired = expired.filter(project_id=project_id)
    # The common case on the next-task path: nothing expired, one indexed query.
    if not expired.exists():
        return 0
    with transaction.atomic():
        locked = expired.select_for_update(skip_locked=True)
        rows = list(locked.values_list("id", "task_id")[:LEASE_SWEEP_BATCH])
        if not rows:
            return 0
        Assignment.objects.filter(id__in=[r[0] for r in rows]).update(
            state=Assignment.State.EXPIRED, finished_at=now
        )
        per_task: dict[int, int] = {}
        for _, task_id in rows:
            per_task[task_id] = per_task.get(task_id, 0) + 1
        for task_id in sorted(per_task):
            Task.objects.filter(pk=task_id).update(
                assigned_count=F("assigned_count") - per_task[task_id]
            )
    return len(rows)


def _completion_texts(task: Task) -> dict[int, str]:
    if task.kind != Task.Kind.RANK:
        return {}
    return dict(
        TaskCompletion.objects.filter(task=task).values_list("completion_id", "completion__text")
    )


def assignment_create(*, task: Task, annotator, now=None) -> Assignment:
    """Create an assignment for a task whose row the caller holds locked (or a gold task).

    Should be called inside a transaction holding SELECT FOR UPDATE on the task.
    """
    now = now or timezone.now()
    project = task.project
    texts = _completion_texts(task)
    order = list(texts)
    random.shuffle(order)
    assignment = Assignment.objects.create(
        task=task,
        annotator=annotator,
        project_id=task.project_id,
        display_order=order,
        expires_at=now + timedelta(minutes=project.lease_minutes),
    )
    Task.objects.filter(pk=task.pk).update(assigned_count=F("assigned_count") + 1)
    # Handed to the caller so that showing the task needs no second query.
    assignment.completion_texts = texts
    return assignment


def _queue(*, project, annotator, kind):
    tasks = Task.objects.filter(project=project, status=Task.Status.OPEN)
    if kind:
        tasks = tasks.filter(kind=kind)
    # The annotator's own prompts are never given back to them.
    tasks = tasks.filter(Q(prompt_author__isnull=True) | ~Q(prompt_author=annotator))
    return tasks.exclude(
        pk__in=Assignment.objects.filter(annotator=annotator, project=project).values("task_id")
    )


def assignment_active_get(*, project, annotator, kind=None, now=None):
    """Return the annotator's unexpired active assignment in the project, if any."""
    now = now or timezone.now()
    active = Assignment.objects.select_related("task", "task__prompt", "project").filter(
        project=project,
        annotator=annotator,
        state=Assignment.State.ACTIVE,
        expires_at__gt=now,
    )
    if kind:
        active = active.filter(task__kind=kind)
    return active.order_by("id").first()


def assignment_claim_next(*, project, annotator, kind=None, rng=random) -> Assignment | None:
    """Return the annotator's current assignment, or claim the next task for them.

    One claim statement takes the first open task (priority, then age) that is under
    its overlap, not yet seen by this annotator and not written by them, skipping rows
    other claimers hold (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serializes
    writers). Gold tasks are mixed in at the project's rate. Return None when nothing
    is left for this annotator.
    """
    current = assignment_active_get(project=project, annotator=annotator, kind=kind)
    if current is not None:
        return current
    leases_expire(project_id=project.pk)
    queue = _queue(project=project, annotator=annotator, kind=kind)
    for _attempt in range(3):
        try:
            with transaction.atomic():
                task = None
                if project.gold_rate > 0 and rng.random() < project.gold_rate:
                    # Gold tasks have no overlap limit: no lock needed.
                    task = queue.filter(is_gold=True).select_related("prompt").order_by("?").first()
                if task is None:
                    task = (
                        queue.filter(is_gold=False, assigned_count__lt=F("required_annotations"))
                        .select_related("prompt")
                        .select_for_update(skip_locked=True, of=("self",))
                        .order_by("-priority", "id")
                        .first()
                    )
                if task is None:
                    return None
                task.project = project
                assignment = assignment_create(task=task, annotator=annotator)
        except IntegrityError:
            # The same annotator claimed concurrently (a double click): use that claim.
            current = assignment_active_get(project=project, annotator=annotator, kind=kind)
            if current is not None:
                return current
            continue
        assignment.task = task
        assignment.project = project
        return assignment
    return None


class AssignmentStateError(Exception):
    """The assignment cannot take this action in its current state."""


def assignment_skip(*, assignment: Assignment, reason: str) -> Assignment:
    """Give the task back to the pool, recording why; the annotator will not see it again."""
    with transaction.atomic():
        locked = Assignment.objects.select_for_update().get(pk=assignment.pk)
        if locked.state == Assignment.State.SKIPPED:
            return locked
        if locked.state != Assignment.State.ACTIVE:
            raise AssignmentStateError(
                _("this assignment is already %(state)s") % {"state": locked.get_state_display()}
            )
        locked.state = Assignment.State.SKIPPED
        locked.skip_reason = reason.strip()[:2000]
        locked.finished_at = timezone.now()
        locked.save(update_fields=["state", "skip_reason", "finished_at"])
        Task.objects.filter(pk=locked.task_id).update(assigned_count=F("assigned_count") - 1)
    return locked
