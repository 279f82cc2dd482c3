"""The annotator queue: claim the next task, expire leases, skip."""

import random
from datetime import timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _

from labeling.models import Annotation, Assignment, Prompt, Task

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


def _completion_texts(task_id: int) -> dict[int, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tc.completion_id, c.text FROM labeling_taskcompletion tc"
            " JOIN labeling_completion c ON c.id = tc.completion_id"
            " WHERE tc.task_id = %s ORDER BY tc.position",
            [task_id],
        )
        return dict(cursor.fetchall())


def assignment_create(*, task: Task, annotator, project, now=None) -> Assignment:
    """Create an assignment for a task whose row the caller holds locked (or a gold task).

    Should be called inside a transaction holding SELECT FOR UPDATE on the task.
    """
    now = now or timezone.now()
    texts = _completion_texts(task.pk) if task.kind == Task.Kind.RANK else {}
    order = list(texts)
    random.shuffle(order)
    assignment = Assignment.objects.create(
        task=task,
        annotator=annotator,
        project=project,
        display_order=order,
        expires_at=now + timedelta(minutes=project.lease_minutes),
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE labeling_task SET assigned_count = assigned_count + 1 WHERE id = %s",
            [task.pk],
        )
    # Handed to the caller so that showing the task needs no second query.
    assignment.completion_texts = texts
    return assignment


def assignment_active_get(*, project, annotator, kind=None, now=None):
    """Return the annotator's unexpired active assignment in the project, if any."""
    now = now or timezone.now()
    join, params = "", [project.pk, annotator.pk, now]
    if kind:
        join, params = " JOIN labeling_task t ON t.id = a.task_id AND t.kind = %s", [kind, *params]
    # Usually there is none: one narrow query, and the full row only when there is.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT a.id FROM labeling_assignment a{join}"
            " WHERE a.project_id = %s AND a.annotator_id = %s AND a.state = 'active'"
            " AND a.expires_at > %s ORDER BY a.id LIMIT 1",
            params,
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return Assignment.objects.select_related("task", "task__prompt", "project").get(pk=row[0])


# The queue, in one statement: the first open task (priority, then age) under its
# overlap, never seen by this annotator and not written by them. Hand-written because
# it runs on every next-task call; the partial indexes task_queue_idx and
# task_queue_kind_idx give this order, so the scan stops at the first free row.
_CLAIM_SQL = """
SELECT t.id, t.kind, t.prompt_id, t.priority, t.required_annotations, t.assigned_count,
       t.submitted_count, t.status, t.is_gold,
       p.text, p.messages, p.category, p.author_id
FROM labeling_task t LEFT JOIN labeling_prompt p ON p.id = t.prompt_id
WHERE t.project_id = %s AND t.status = 'open' AND {gold}{kind}
  AND (t.prompt_author_id IS NULL OR t.prompt_author_id <> %s)
  AND NOT EXISTS (SELECT 1 FROM labeling_assignment a
                  WHERE a.task_id = t.id AND a.annotator_id = %s)
ORDER BY {order}
LIMIT 1{lock}
"""


def _claim_row(*, project, annotator, kind, gold: bool):
    lock = ""
    if not gold and connection.features.has_select_for_update_skip_locked:
        lock = " FOR NO KEY UPDATE OF t SKIP LOCKED"
    sql = _CLAIM_SQL.format(
        gold="t.is_gold" if gold else "NOT t.is_gold AND t.assigned_count < t.required_annotations",
        kind=" AND t.kind = %s" if kind else "",
        # Gold tasks have no overlap limit, so no lock; any unseen one will do.
        order="random()" if gold else "t.priority DESC, t.id",
        lock=lock,
    )
    params = [project.pk, *([kind] if kind else []), annotator.pk, annotator.pk]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    (task_id, task_kind, prompt_id, priority, required, assigned, submitted, status, is_gold,
     text, messages, category, author_id) = row
    prompt = None
    if prompt_id is not None:
        messages_field = Prompt._meta.get_field("messages")
        prompt = Prompt(
            id=prompt_id, project_id=project.pk, text=text, category=category,
            messages=messages_field.from_db_value(messages, None, connection),
            author_id=author_id,
        )
    return Task(
        id=task_id, project_id=project.pk, kind=task_kind, prompt_id=prompt_id, prompt=prompt,
        priority=priority, required_annotations=required, assigned_count=assigned,
        submitted_count=submitted, status=status, is_gold=bool(is_gold),
    )


def assignment_claim_next(*, project, annotator, kind=None, rng=random) -> Assignment | None:
    """Return the annotator's current assignment, or claim the next task for them.

    One claim statement takes the first open task (priority, then age) that is under
    its overlap, not yet seen by this annotator and not written by them, skipping rows
    other claimers hold (``FOR NO KEY UPDATE SKIP LOCKED`` on PostgreSQL; SQLite
    serializes writers). Gold tasks are mixed in at the project's rate. Expired leases
    are swept by the periodic task, and here too when the queue looks empty. Return
    None when nothing is left for this annotator.
    """
    current = assignment_active_get(project=project, annotator=annotator, kind=kind)
    if current is not None:
        return current
    swept = False
    for _attempt in range(4):
        try:
            with transaction.atomic():
                task = None
                if project.gold_rate > 0 and rng.random() < project.gold_rate:
                    task = _claim_row(project=project, annotator=annotator, kind=kind, gold=True)
                if task is None:
                    task = _claim_row(project=project, annotator=annotator, kind=kind, gold=False)
                if task is not None:
                    assignment = assignment_create(task=task, annotator=annotator,
                                                   project=project)
        except IntegrityError:
            # The same annotator claimed concurrently (a double click): use that claim.
            current = assignment_active_get(project=project, annotator=annotator, kind=kind)
            if current is not None:
                return current
            continue
        if task is None:
            if swept or not leases_expire(project_id=project.pk):
                return None
            swept = True  # expired leases gave slots back: look once more
            continue
        assignment.task = task
        assignment.project = project
        return assignment
    return None


def work_refusal(*, membership) -> str | None:
    """Return why the member may not take a task now (paused, daily quota), or None."""
    if not membership.is_active:
        return membership.paused_reason or _("your work in this project is paused by a lead")
    if membership.daily_quota:
        # A range on the column, not created_at__date (a function of it): an index can
        # serve the range.
        midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
        done = Annotation.objects.filter(
            project_id=membership.project_id, annotator_id=membership.user_id,
            created_at__gte=midnight,
        ).count()
        if done >= membership.daily_quota:
            return _("you reached today's quota of %(n)s tasks in this project") % {
                "n": membership.daily_quota
            }
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
