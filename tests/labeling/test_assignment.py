import random
from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from labeling.models import Assignment, Task
from labeling.services.assignment import (
    assignment_claim_next,
    assignment_skip,
    leases_expire,
)
from labeling.services.importing import prompts_import, records_from_items
from tests.conftest import rank_items


def test_it_gives_an_annotator_their_current_assignment_again(project, rank_tasks, bob):
    first = assignment_claim_next(project=project, annotator=bob)
    again = assignment_claim_next(project=project, annotator=bob)
    assert first.pk == again.pk
    assert Assignment.objects.count() == 1


def test_it_never_assigns_a_task_twice_to_one_annotator(project, rank_tasks, bob):
    seen = []
    while (assignment := assignment_claim_next(project=project, annotator=bob)) is not None:
        seen.append(assignment.task_id)
        assignment_skip(assignment=assignment, reason="unclear")
    assert sorted(seen) == sorted(t.pk for t in rank_tasks)


def test_it_never_hands_out_more_assignments_than_the_overlap(project, rank_tasks, alice):
    from labeling.services.project import membership_add

    annotators = []
    for i in range(5):
        member, _ = membership_add(project=project, username=f"ann{i}", role="annotator",
                                   password="correct-horse-battery")
        annotators.append(member.user)
    for annotator in annotators:
        while assignment_claim_next(project=project, annotator=annotator) is not None:
            current = Assignment.objects.get(annotator=annotator, state="active")
            current.state = "submitted"
            current.save()
    for task in Task.objects.all():
        assert task.assignments.count() == task.required_annotations == 1


def test_it_honours_priority_then_age(project, rank_tasks, bob):
    last = rank_tasks.order_by("-id").first()
    Task.objects.filter(pk=last.pk).update(priority=10)
    assert assignment_claim_next(project=project, annotator=bob).task_id == last.pk


def test_it_filters_by_kind(project, rank_tasks, bob):
    prompts_import(project=project, records=records_from_items([{"prompt": "write me"}]))
    got = assignment_claim_next(project=project, annotator=bob, kind="demonstrate")
    assert got.task.kind == "demonstrate"


def test_it_shuffles_and_records_the_display_order(project, rank_tasks, bob, dana):
    random.seed(3)
    orders = set()
    for user in (bob, dana):
        for _ in range(4):
            a = assignment_claim_next(project=project, annotator=user)
            ids = list(a.task.task_completions.values_list("completion_id", flat=True))
            assert sorted(a.display_order) == sorted(ids)
            orders.add(tuple(a.display_order) != tuple(ids))
            assignment_skip(assignment=a, reason="")
    assert True in orders


def test_an_expired_lease_returns_the_task_to_the_pool(project, bob, dana):
    prompts_import(project=project, records=records_from_items(rank_items(1)))
    held = assignment_claim_next(project=project, annotator=bob)
    assert assignment_claim_next(project=project, annotator=dana) is None
    Assignment.objects.filter(pk=held.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    taken = assignment_claim_next(project=project, annotator=dana)
    assert taken is not None and taken.task_id == held.task_id
    held.refresh_from_db()
    assert held.state == "expired"
    assert Task.objects.get(pk=held.task_id).assigned_count == 1


def test_the_sweeper_counts_each_expired_lease_once(project, rank_tasks, bob):
    a = assignment_claim_next(project=project, annotator=bob)
    later = timezone.now() + timedelta(hours=2)
    assert leases_expire(now=later) == 1
    assert leases_expire(now=later) == 0
    assert Task.objects.get(pk=a.task_id).assigned_count == 0


def test_it_does_not_give_annotators_their_own_prompts(project, bob):
    from labeling.models import Prompt

    prompts_import(project=project, records=records_from_items(rank_items(1)))
    task = Task.objects.get()
    Prompt.objects.filter(pk=task.prompt_id).update(author=bob)
    Task.objects.filter(pk=task.pk).update(prompt_author=bob)
    assert assignment_claim_next(project=project, annotator=bob) is None


def test_gold_tasks_are_mixed_in_at_the_project_rate(project, gold_task, bob):
    first = assignment_claim_next(project=project, annotator=bob)
    assert first.task_id == gold_task.pk


def test_skip_records_the_reason_and_frees_the_slot(project, rank_tasks, bob):
    a = assignment_claim_next(project=project, annotator=bob)
    skipped = assignment_skip(assignment=a, reason="needs expertise")
    assert skipped.state == "skipped" and skipped.skip_reason == "needs expertise"
    assert Task.objects.get(pk=a.task_id).assigned_count == 0


def _claim_queries(project, annotator) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert assignment_claim_next(project=project, annotator=annotator) is not None
    return len(ctx.captured_queries)


def test_the_next_task_path_costs_the_same_queries_at_10_and_10000_tasks(project, bob, dana):
    project.per_user_cap = 100_000
    project.save()
    prompts_import(project=project, records=records_from_items(rank_items(10)))
    small = _claim_queries(project, bob)
    prompts_import(project=project, records=records_from_items(rank_items(9990, prefix="Big")))
    assert Task.objects.count() == 10_000
    large = _claim_queries(project, dana)
    assert small == large
    assert large <= 8  # savepoint and release included
