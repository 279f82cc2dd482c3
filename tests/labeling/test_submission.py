from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from labeling.models import Annotation, Assignment, Completion, Prompt, Task
from labeling.services.assignment import assignment_claim_next, assignment_skip, leases_expire
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.project import write_prompt_tasks_create
from labeling.services.submission import SubmissionConflict, annotation_submit


def full_ranking(assignment, ranks=None, rating=5):
    ranks = ranks or list(range(1, len(assignment.display_order) + 1))
    return [
        {"completion": cid, "rank": rank, "rating": rating, "flags": []}
        for cid, rank in zip(assignment.display_order, ranks, strict=True)
    ]


@pytest.fixture
def ranked(project, rank_tasks, bob):
    return assignment_claim_next(project=project, annotator=bob, kind="rank")


def test_it_records_a_ranking_in_display_order(ranked):
    entries = full_ranking(ranked)
    entries[0]["flags"] = ["hallucination"]
    result = annotation_submit(assignment=ranked, data={"ranking": entries[::-1], "comment": "ok"})
    annotation = result.annotation
    assert not result.replayed
    assert [e["completion"] for e in annotation.ranking] == ranked.display_order
    assert annotation.ranking[0]["flags"] == ["hallucination"]
    assert annotation.comment == "ok" and annotation.time_spent_ms is not None
    ranked.refresh_from_db()
    assert ranked.state == "submitted"
    task = Task.objects.get(pk=ranked.task_id)
    assert task.submitted_count == 1 and task.status == "complete"


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda e: e.pop(), "missing"),
        (lambda e: e.append(dict(e[0])), "more than once"),
        (lambda e: e[0].update(completion=999_999), "not shown"),
        (lambda e: e[0].update(rank=9), "rank must be"),
        (lambda e: e[0].update(rank=0), "rank must be"),
        (lambda e: e[0].update(rating=8), "rating must be"),
        (lambda e: e[0].update(rating=None), "give a rating"),
        (lambda e: e[0].update(flags=["made_up"]), "unknown flag"),
        (lambda e: [x.update(rank=1) for x in e[:2]] and e[2].update(rank=3), "consecutive"),
    ],
)
def test_it_rejects_a_bad_ranking_with_a_clear_message(ranked, mutate, needle):
    entries = full_ranking(ranked)
    mutate(entries)
    with pytest.raises(ValidationError) as exc:
        annotation_submit(assignment=ranked, data={"ranking": entries})
    assert needle in " ".join(exc.value.message_dict["ranking"])
    assert Annotation.objects.count() == 0


def test_it_accepts_dense_ties_when_the_project_allows_them(ranked):
    result = annotation_submit(assignment=ranked,
                               data={"ranking": full_ranking(ranked, [1, 1, 2, 3])})
    assert sorted(e["rank"] for e in result.annotation.ranking) == [1, 1, 2, 3]


def test_it_refuses_ties_when_the_project_does_not_allow_them(project, ranked):
    project.allow_ties = False
    project.save()
    with pytest.raises(ValidationError, match="ties are not allowed"):
        annotation_submit(assignment=ranked, data={"ranking": full_ranking(ranked, [1, 1, 2, 3])})


def test_a_double_submit_records_one_annotation(ranked):
    data = {"ranking": full_ranking(ranked)}
    first = annotation_submit(assignment=ranked, data=data, idempotency_key="abc")
    second = annotation_submit(assignment=ranked, data=data, idempotency_key="abc")
    third = annotation_submit(assignment=ranked, data=data)
    assert second.replayed and third.replayed
    assert first.annotation.pk == second.annotation.pk == third.annotation.pk
    assert Annotation.objects.count() == 1
    assert Task.objects.get(pk=ranked.task_id).submitted_count == 1


def test_a_second_submit_with_another_key_conflicts(ranked):
    annotation_submit(assignment=ranked, data={"ranking": full_ranking(ranked)},
                      idempotency_key="one")
    with pytest.raises(SubmissionConflict):
        annotation_submit(assignment=ranked, data={"ranking": full_ranking(ranked)},
                          idempotency_key="two")


def test_a_skipped_assignment_cannot_be_submitted(ranked):
    assignment_skip(assignment=ranked, reason="")
    with pytest.raises(SubmissionConflict):
        annotation_submit(assignment=ranked, data={"ranking": full_ranking(ranked)})


def test_a_late_submit_counts_when_the_slot_is_still_free(project, ranked):
    Assignment.objects.filter(pk=ranked.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1), state="expired")
    Task.objects.filter(pk=ranked.task_id).update(assigned_count=0)
    ranked.refresh_from_db()
    annotation_submit(assignment=ranked, data={"ranking": full_ranking(ranked)})
    task = Task.objects.get(pk=ranked.task_id)
    assert task.assigned_count == 1 and task.submitted_count == 1


def test_a_late_submit_is_refused_when_someone_else_took_the_slot(project, ranked, dana):
    Assignment.objects.filter(pk=ranked.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1))
    assert leases_expire() == 1  # the periodic sweeper
    taken = assignment_claim_next(project=project, annotator=dana)
    assert taken.task_id == ranked.task_id
    ranked.refresh_from_db()
    with pytest.raises(SubmissionConflict, match="expired"):
        annotation_submit(assignment=ranked, data={"ranking": full_ranking(ranked)})


def test_a_better_response_is_stored_as_a_demonstration(ranked):
    result = annotation_submit(
        assignment=ranked, data={"ranking": full_ranking(ranked), "text": "A much better one."})
    demo = result.annotation.demonstration
    assert demo.source == Completion.Source.HUMAN and demo.text == "A much better one."
    assert demo.author == ranked.annotator


def test_a_demonstration_is_recorded(project, bob):
    prompts_import(project=project, records=records_from_items([{"prompt": "Explain tides"}]))
    a = assignment_claim_next(project=project, annotator=bob)
    with pytest.raises(ValidationError):
        annotation_submit(assignment=a, data={"text": "   "})
    result = annotation_submit(assignment=a, data={"text": "The moon pulls the sea."})
    assert result.annotation.kind == "demonstrate"
    assert result.annotation.demonstration.text == "The moon pulls the sea."


def test_gold_answers_are_scored_silently(project, gold_task, bob):
    gold, ids = gold_task, gold_task.expected_ids
    a = assignment_claim_next(project=project, annotator=bob)
    assert a.task_id == gold.pk
    reverse = {cid: len(ids) - i for i, cid in enumerate(ids)}
    ranking = [{"completion": c, "rank": reverse[c], "rating": 4} for c in a.display_order]
    result = annotation_submit(assignment=a, data={"ranking": ranking})
    assert result.annotation.gold_score == 0.0
    assert Task.objects.get(pk=gold.pk).status == "open"


def test_an_annotator_writes_a_few_shot_prompt(project, bob, dana):
    write_prompt_tasks_create(project=project, count=1)
    a = assignment_claim_next(project=project, annotator=bob, kind="write_prompt")
    with pytest.raises(ValidationError, match="two"):
        annotation_submit(assignment=a, data={"text": "Classify", "style": "few_shot",
                                              "examples": [{"query": "q", "response": "r"}]})
    result = annotation_submit(assignment=a, data={
        "text": "Classify the sentiment.", "style": "few_shot", "category": "classification",
        "examples": [{"query": "I love it", "response": "positive"},
                     {"query": "Awful", "response": "negative"}]})
    prompt = result.annotation.written_prompt
    assert prompt.source == Prompt.Source.ANNOTATOR and prompt.style == "few_shot"
    assert "Query: I love it" in prompt.text and prompt.category == "classification"
    # The new prompt goes to the demonstration queue, but never back to its author.
    assert assignment_claim_next(project=project, annotator=bob, kind="demonstrate") is None
    other = assignment_claim_next(project=project, annotator=dana, kind="demonstrate")
    assert other.task.prompt_id == prompt.pk
