"""Submitting an assignment: validate, record one annotation, free or fill the slot.

A submission is idempotent: the same submit sent twice (a double click, a network
retry) records one annotation and returns it both times.
"""

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _

from labeling import text as textutil
from labeling.flags import RATING_MAX, RATING_MIN
from labeling.models import Annotation, Assignment, Category, Completion, Prompt, Task
from labeling.ranking import gold_score, ranking_problems
from labeling.services.importing import LineError, task_build, validate_record

MAX_TEXT_CHARS = 100_000


class SubmissionConflict(Exception):
    """The assignment was already submitted differently, skipped, or lost its lease."""


@dataclass
class SubmitResult:
    annotation: Annotation
    replayed: bool


def _existing_for_key(*, annotator_id, idempotency_key):
    if not idempotency_key:
        return None
    return Annotation.objects.filter(
        annotator_id=annotator_id, idempotency_key=idempotency_key
    ).first()


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


def _retake_slot(assignment: Assignment, task: Task, now) -> None:
    """Let a late submit count when its expired slot is still free, else refuse it."""
    if assignment.state == Assignment.State.ACTIVE and assignment.expires_at > now:
        return
    if assignment.state == Assignment.State.ACTIVE:
        # Past its lease but not yet swept: the slot is still counted as ours.
        return
    if task.is_gold or task.assigned_count < task.required_annotations:
        Task.objects.filter(pk=task.pk).update(assigned_count=F("assigned_count") + 1)
        task.assigned_count += 1
        return
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

    ``data`` is {"ranking": [...], "comment", "text" (better response)} for a rank
    task, {"text"} for a demonstration, {"text" or "messages", "category", "style",
    "examples"} for a written prompt. Raise ValidationError with every problem found,
    or SubmissionConflict when the assignment cannot be submitted any more.
    """
    idempotency_key = (idempotency_key or "")[:100]
    annotator_id = assignment.annotator_id
    replay = _existing_for_key(annotator_id=annotator_id, idempotency_key=idempotency_key)
    if replay is not None:
        if replay.assignment_id != assignment.pk:
            raise SubmissionConflict(_("this Idempotency-Key was used for another assignment"))
        return SubmitResult(replay, True)
    now = timezone.now()
    try:
        with transaction.atomic():
            locked = (
                Assignment.objects.select_for_update(of=("self",))
                .select_related("annotator")
                .get(pk=assignment.pk)
            )
            if locked.state == Assignment.State.SUBMITTED:
                first = Annotation.objects.get(assignment=locked)
                if idempotency_key and first.idempotency_key not in ("", idempotency_key):
                    raise SubmissionConflict(_("this assignment was already submitted"))
                return SubmitResult(first, True)
            if locked.state == Assignment.State.SKIPPED:
                raise SubmissionConflict(_("this assignment was skipped"))
            task = (
                Task.objects.select_for_update(of=("self",))
                .select_related("project", "prompt")
                .get(pk=locked.task_id)
            )
            _retake_slot(locked, task, now)
            annotation = _build_annotation(locked, task, data)
            annotation.idempotency_key = idempotency_key
            annotation.time_spent_ms = (
                time_spent_ms
                if isinstance(time_spent_ms, int) and time_spent_ms >= 0
                else int((now - locked.created_at).total_seconds() * 1000)
            )
            annotation.save()
            locked.state = Assignment.State.SUBMITTED
            locked.finished_at = now
            locked.save(update_fields=["state", "finished_at"])
            submitted = task.submitted_count + 1
            done = not task.is_gold and submitted >= task.required_annotations
            Task.objects.filter(pk=task.pk).update(
                submitted_count=F("submitted_count") + 1,
                status=Task.Status.COMPLETE if done else task.status,
            )
    except IntegrityError:
        # The same key raced in from a second request: the first one won.
        replay = _existing_for_key(annotator_id=annotator_id, idempotency_key=idempotency_key)
        if replay is None:
            raise
        return SubmitResult(replay, True)
    return SubmitResult(annotation, False)


def _build_annotation(assignment: Assignment, task: Task, data: dict) -> Annotation:
    if not isinstance(data, dict):
        raise ValidationError(_("the submission must be a JSON object"))
    annotation = Annotation(
        assignment=assignment,
        task=task,
        annotator=assignment.annotator,
        project_id=task.project_id,
        kind=task.kind,
    )
    comment = data.get("comment") or ""
    annotation.comment = _clean_text(comment, field="comment", required=False)[:10_000]
    if task.kind == Task.Kind.RANK:
        _fill_ranking(annotation, assignment, task, data)
    elif task.kind == Task.Kind.DEMONSTRATE:
        annotation.text = _clean_text(data.get("text"))
        annotation.demonstration = Completion.objects.create(
            prompt=task.prompt,
            text=annotation.text,
            source=Completion.Source.HUMAN,
            generator="human",
            author=assignment.annotator,
        )
    else:
        annotation.written_prompt = _write_prompt(assignment, task, data)
    return annotation


def _fill_ranking(annotation, assignment, task, data) -> None:
    project = task.project
    entries = data.get("ranking")
    problems = ranking_problems(
        entries,
        shown=list(assignment.display_order),
        allow_ties=project.allow_ties,
        flags=project.flags,
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
    better = _clean_text(data.get("text"), required=False)
    if better.strip():
        annotation.text = better
        annotation.demonstration = Completion.objects.create(
            prompt=task.prompt,
            text=better,
            source=Completion.Source.HUMAN,
            generator="human",
            author=assignment.annotator,
        )
    if task.is_gold and task.gold_ranking:
        expected = {int(cid): rank for cid, rank in task.gold_ranking.items()}
        given = {entry["completion"]: entry["rank"] for entry in annotation.ranking}
        annotation.gold_score = gold_score(given, expected)


def _write_prompt(assignment, task, data) -> Prompt:
    project = task.project
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
    annotator = assignment.annotator
    prompt = Prompt.objects.create(
        project=project,
        text=item.text,
        messages=item.messages,
        category=item.category,
        source=Prompt.Source.ANNOTATOR,
        style=style,
        external_user_id=f"annotator:{annotator.pk}",
        split=textutil.split_for(
            f"annotator:{annotator.pk}", project.split_train, project.split_valid
        ),
        content_hash=item.content_hash,
        prefix_hash=item.prefix_hash,
        metadata={"examples": data.get("examples")} if style == Prompt.Style.FEW_SHOT else {},
        author=annotator,
    )
    # A written prompt goes straight into the demonstration queue (not to its author).
    task_build(project=project, kind=Task.Kind.DEMONSTRATE, prompt=prompt).save()
    return prompt
