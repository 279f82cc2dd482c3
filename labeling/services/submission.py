"""Submitting an assignment: validate, record one annotation, free or fill the slot.

A submission is idempotent: the same submit sent twice (a double click, a network
retry) records one annotation and returns it both times.
"""

import datetime as dt
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Avg, Count
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _

from labeling.agreement import ranking_summary
from labeling.flags import RATING_MAX, RATING_MIN
from labeling.models import (
    Annotation,
    Assignment,
    Category,
    Completion,
    Membership,
    Project,
    Prompt,
    Task,
)
from labeling.ranking import gold_score, ranking_problems
from labeling.services.importing import LineError, prompt_build, task_build, validate_record

MAX_TEXT_CHARS = 100_000


class SubmissionConflict(Exception):
    """The assignment was already submitted differently, skipped, or lost its lease."""


@dataclass
class SubmitResult:
    annotation: Annotation
    replayed: bool


def _clean_text(value, *, field="text", required=True) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError({field: [_("must be text")]})
    if required and not value.strip():
        raise ValidationError({field: [_("write a response before submitting")]})
    if len(value) > MAX_TEXT_CHARS:
        raise ValidationError(
            {field: [_("is longer than %(n)s characters") % {"n": MAX_TEXT_CHARS}]}
        )
    return value


# The row lock and everything the checks need, in one statement: it runs on every submit.
_LOCK_SQL = """
SELECT a.state, a.display_order, a.created_at, a.expires_at, a.task_id, a.project_id,
       t.kind, t.prompt_id, t.is_gold, t.gold_ranking, p.allow_ties, p.flags
FROM labeling_assignment a
JOIN labeling_task t ON t.id = a.task_id
JOIN labeling_project p ON p.id = a.project_id
WHERE a.id = %s AND a.annotator_id = %s{lock}
"""


@dataclass
class _Locked:
    assignment: Assignment
    task: Task
    allow_ties: bool
    flags: list[str]


def _json(model, field, value):
    return model._meta.get_field(field).from_db_value(value, None, connection)


def _aware(value):
    """Return a raw-cursor datetime as an aware one (SQLite hands back naive UTC)."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is not None and timezone.is_naive(value):
        value = timezone.make_aware(value, dt.UTC)
    return value


def _lock(assignment: Assignment) -> _Locked:
    """Lock the annotator's assignment row; raise Assignment.DoesNotExist if not theirs."""
    lock = ""
    if connection.features.has_select_for_update_of:
        lock = " FOR NO KEY UPDATE OF a" if connection.features.has_select_for_no_key_update \
            else " FOR UPDATE OF a"
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_SQL.format(lock=lock), [assignment.pk, assignment.annotator_id])
        row = cursor.fetchone()
    if row is None:
        raise Assignment.DoesNotExist
    (state, order, created_at, expires_at, task_id, project_id, kind, prompt_id, is_gold,
     gold_ranking, allow_ties, flags) = row
    locked = Assignment(
        id=assignment.pk, annotator_id=assignment.annotator_id, task_id=task_id,
        project_id=project_id, state=state, display_order=_json(Assignment, "display_order", order),
        created_at=_aware(created_at), expires_at=_aware(expires_at),
    )
    task = Task(
        id=task_id, project_id=project_id, kind=kind, prompt_id=prompt_id, is_gold=bool(is_gold),
        gold_ranking=_json(Task, "gold_ranking", gold_ranking),
    )
    return _Locked(locked, task, bool(allow_ties), _json(Project, "flags", flags) or [])


def _sql(statement: str, params: list) -> int:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount


def _retake_slot(assignment: Assignment) -> None:
    """Let a late submit count when its expired slot is still free, else refuse it.

    An active assignment past its lease but not yet swept still holds its slot.
    """
    if assignment.state == Assignment.State.ACTIVE:
        return
    taken = _sql(
        "UPDATE labeling_task SET assigned_count = assigned_count + 1"
        " WHERE id = %s AND (is_gold OR assigned_count < required_annotations)",
        [assignment.task_id],
    )
    if not taken:
        raise SubmissionConflict(
            _("your lease on this task expired and it was given to another annotator")
        )


def annotation_submit(
    *,
    assignment: Assignment,
    data: dict,
    idempotency_key: str = "",
    time_spent_ms: int | None = None,
) -> SubmitResult:
    """Record the annotation for an assignment and return it.

    ``assignment`` needs only its id and annotator_id: the row is read again under a
    lock, and Assignment.DoesNotExist is raised when it is not the annotator's.
    ``data`` is {"ranking": [...], "comment", "text" (better response)} for a rank
    task, {"text"} for a demonstration, {"text" or "messages", "category", "style",
    "examples"} for a written prompt. Raise ValidationError with every problem found,
    or SubmissionConflict when the assignment cannot be submitted any more.
    """
    idempotency_key = (idempotency_key or "")[:100]
    now = timezone.now()
    try:
        with transaction.atomic():
            held = _lock(assignment)
            locked = held.assignment
            if locked.state == Assignment.State.SUBMITTED:
                first = Annotation.objects.get(assignment_id=locked.pk)
                if idempotency_key and first.idempotency_key not in ("", idempotency_key):
                    raise SubmissionConflict(_("this assignment was already submitted"))
                return SubmitResult(first, True)
            if locked.state == Assignment.State.SKIPPED:
                raise SubmissionConflict(_("this assignment was skipped"))
            _retake_slot(locked)
            annotation = _build_annotation(held, data)
            annotation.idempotency_key = idempotency_key
            annotation.time_spent_ms = (
                time_spent_ms
                if isinstance(time_spent_ms, int) and time_spent_ms >= 0
                else int((now - locked.created_at).total_seconds() * 1000)
            )
            annotation.save()
            _sql(
                "UPDATE labeling_assignment SET state = %s, finished_at = %s WHERE id = %s",
                [Assignment.State.SUBMITTED, now, locked.pk],
            )
            if annotation.gold_score is not None:
                _gold_check(project_id=locked.project_id, annotator_id=locked.annotator_id)
            _sql(
                "UPDATE labeling_task SET submitted_count = submitted_count + 1, status = CASE"
                " WHEN NOT is_gold AND submitted_count + 1 >= required_annotations THEN %s"
                " ELSE status END WHERE id = %s",
                [Task.Status.COMPLETE, locked.task_id],
            )
    except IntegrityError:
        # The key was used before: a replay racing the first request, or another task.
        replay = Annotation.objects.filter(
            annotator_id=assignment.annotator_id, idempotency_key=idempotency_key
        ).first()
        if replay is None or not idempotency_key:
            raise
        if replay.assignment_id != assignment.pk:
            raise SubmissionConflict(
                _("this Idempotency-Key was used for another assignment")
            ) from None
        return SubmitResult(replay, True)
    return SubmitResult(annotation, False)


def _gold_check(*, project_id: int, annotator_id: int) -> None:
    """Pause an annotator whose gold accuracy fell under the project's threshold."""
    project = Project.objects.only("gold_threshold", "gold_min_answers").get(pk=project_id)
    if project.gold_threshold is None:
        return
    scores = Annotation.objects.filter(
        project_id=project_id, annotator_id=annotator_id, gold_score__isnull=False
    ).aggregate(n=Count("id"), accuracy=Avg("gold_score"))
    if scores["n"] >= project.gold_min_answers and scores["accuracy"] < project.gold_threshold:
        reason = _(
            "Your work is paused: your accuracy on check tasks is %(accuracy).0f%%, under "
            "the project's %(threshold).0f%%. A lead will review it with you."
        ) % {"accuracy": scores["accuracy"] * 100, "threshold": project.gold_threshold * 100}
        Membership.objects.filter(
            project_id=project_id, user_id=annotator_id, is_active=True
        ).update(is_active=False, paused_reason=reason)


def _demonstration(task: Task, annotator_id: int, text: str) -> Completion:
    return Completion.objects.create(
        prompt_id=task.prompt_id,
        text=text,
        source=Completion.Source.HUMAN,
        generator="human",
        author_id=annotator_id,
    )


def _build_annotation(held: _Locked, data: dict) -> Annotation:
    if not isinstance(data, dict):
        raise ValidationError(_("the submission must be a JSON object"))
    assignment, task = held.assignment, held.task
    annotation = Annotation(
        assignment=assignment,
        task_id=task.pk,
        annotator_id=assignment.annotator_id,
        project_id=task.project_id,
        kind=task.kind,
    )
    comment = data.get("comment") or ""
    annotation.comment = _clean_text(comment, field="comment", required=False)[:10_000]
    if task.kind == Task.Kind.RANK:
        _fill_ranking(annotation, held, data)
    elif task.kind == Task.Kind.DEMONSTRATE:
        annotation.text = _clean_text(data.get("text"))
        annotation.demonstration = _demonstration(task, assignment.annotator_id, annotation.text)
    else:
        annotation.written_prompt = _write_prompt(assignment, task, data)
    return annotation


def _fill_ranking(annotation, held: _Locked, data) -> None:
    assignment, task = held.assignment, held.task
    entries = data.get("ranking")
    problems = ranking_problems(
        entries,
        shown=list(assignment.display_order),
        allow_ties=held.allow_ties,
        flags=held.flags,
        rating_range=(RATING_MIN, RATING_MAX),
    )
    if problems:
        raise ValidationError({"ranking": [_(p.template) % p.params for p in problems]})
    by_id = {entry["completion"]: entry for entry in entries}
    # Stored in display order, with only the known keys.
    annotation.ranking = [
        {
            "completion": cid,
            "rank": by_id[cid]["rank"],
            "rating": by_id[cid].get("rating"),
            "flags": sorted(set(by_id[cid].get("flags", []))),
        }
        for cid in assignment.display_order
    ]
    summary = ranking_summary(annotation.ranking)
    annotation.position_rho, annotation.flagged_responses, annotation.responses = summary
    better = _clean_text(data.get("text"), required=False)
    if better.strip():
        annotation.text = better
        annotation.demonstration = _demonstration(task, assignment.annotator_id, better)
    if task.is_gold and task.gold_ranking:
        expected = {int(cid): rank for cid, rank in task.gold_ranking.items()}
        given = {entry["completion"]: entry["rank"] for entry in annotation.ranking}
        annotation.gold_score = gold_score(given, expected)


def _write_prompt(assignment, task, data) -> Prompt:
    project = Project.objects.get(pk=task.project_id)
    style = data.get("style") or Prompt.Style.PLAIN
    if style not in Prompt.Style.values:
        raise ValidationError(
            {"style": [_("use one of %(values)s") % {"values": ", ".join(Prompt.Style.values)}]}
        )
    record = {"category": data.get("category") or Category.OTHER}
    if data.get("messages"):
        record["messages"] = data["messages"]
    else:
        instruction = _clean_text(data.get("text"), field="text")
        examples = data.get("examples") or []
        if style == Prompt.Style.FEW_SHOT:
            if not isinstance(examples, list) or len(examples) < 2:
                message = _("a few-shot prompt needs at least two query/response examples")
                raise ValidationError({"examples": [message]})
            parts = [instruction.strip()]
            for i, example in enumerate(examples, start=1):
                if not isinstance(example, dict):
                    message = _("example %(n)s must be an object") % {"n": i}
                    raise ValidationError({"examples": [message]})
                query = _clean_text(example.get("query"), field=f"examples[{i}].query")
                response = _clean_text(example.get("response"), field=f"examples[{i}].response")
                parts.append(f"Query: {query.strip()}\nResponse: {response.strip()}")
            instruction = "\n\n".join(parts)
        record["prompt"] = instruction
    try:
        item = validate_record(record, line=1, prefix_chars=project.dedup_prefix_chars)
    except LineError as exc:
        raise ValidationError({"prompt": [str(exc)]}) from exc
    if Prompt.objects.filter(project=project, content_hash=item.content_hash).exists():
        raise ValidationError({"prompt": [_("this prompt already exists in the project")]})
    annotator_id = assignment.annotator_id
    item.user_id = f"annotator:{annotator_id}"
    if style == Prompt.Style.FEW_SHOT:
        item.metadata = {"examples": data.get("examples")}
    prompt = prompt_build(project=project, item=item, source=Prompt.Source.ANNOTATOR,
                          author_id=annotator_id, style=style)
    prompt.save()
    # A written prompt goes straight into the demonstration queue (not to its author).
    task_build(project=project, kind=Task.Kind.DEMONSTRATE, prompt=prompt).save()
    return prompt
