"""Stored agreement: incremental refreshes equal a full recompute; the API reads them."""

import itertools
import random

import pytest
from django.core.management import call_command
from hypothesis import given, settings
from hypothesis import strategies as st

from labeling import agreement
from labeling.models import Annotation, AnnotatorTaskAgreement, ProjectAgreement, TaskAgreement
from labeling.services.assignment import assignment_claim_next
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.metrics import agreement_refresh
from labeling.services.project import membership_add, project_update
from labeling.services.submission import annotation_submit
from tests.conftest import rank_items


def _annotators(project, n):
    return [membership_add(project=project, username=f"m{i}", role="annotator",
                           password="correct-horse-battery")[0].user for i in range(n)]


def _submit_random(project, annotator, rng):
    assignment = assignment_claim_next(project=project, annotator=annotator)
    if assignment is None:
        return False
    order = list(assignment.display_order)
    rng.shuffle(order)
    ranks = [1, 1, 2, 3] if rng.random() < 0.3 else [1, 2, 3, 4]
    ranking = [{"completion": c, "rank": r, "rating": rng.randint(1, 7),
                "flags": ["hallucination"] if rng.random() < 0.2 else []}
               for c, r in zip(order, ranks, strict=True)]
    annotation_submit(assignment=assignment, data={"ranking": ranking})
    return True


def _snapshot(project):
    tasks = sorted(TaskAgreement.objects.filter(project=project).values_list(
        "task_id", "annotations", "pair_sum", "pair_count", "tau_sum", "tau_count",
        "consensus", "coincidences", "last_annotated_at"))
    people = sorted(AnnotatorTaskAgreement.objects.filter(project=project).values_list(
        "task_id", "annotator_id", "agree_sum", "pair_count", "consensus_agree"))
    o = ProjectAgreement.objects.get(project=project)
    return tasks, people, (o.agreement, o.tasks, o.pairs, o.tau, o.tau_histogram, o.rank_alpha,
                           o.rating_alpha, o.flag_alpha, o.consensus_agreement, o.trend)


def test_incremental_refreshes_equal_a_full_recompute(project):
    project_update(project=project, overlap=3, per_user_cap=1000)
    prompts_import(project=project, records=records_from_items(rank_items(30)))
    people = _annotators(project, 5)
    rng = random.Random(7)
    for step in range(120):
        _submit_random(project, rng.choice(people), rng)
        if step % 17 == 0:
            agreement_refresh(project=project)
    agreement_refresh(project=project)
    incremental = _snapshot(project)
    call_command("recompute_agreement", project=project.pk)
    assert _snapshot(project) == incremental
    # The stored figure is the pure module's project agreement over the same rankings.
    tasks: dict = {}
    documents: dict = {}
    for task_id, annotator_id, ranking in Annotation.objects.filter(
            project=project, kind="rank").values_list("task_id", "annotator_id", "ranking"):
        tasks.setdefault(task_id, {})[annotator_id] = agreement.ranks_of(ranking)
        documents.setdefault(task_id, {})[annotator_id] = ranking
    multi = {t: r for t, r in tasks.items() if len(r) >= 2}
    overall = ProjectAgreement.objects.get(project=project)
    assert overall.agreement == pytest.approx(agreement.project_agreement(list(multi.values())))
    taus = [agreement.kendall_tau_b(r[x], r[y]) for r in multi.values()
            for x, y in itertools.combinations(sorted(r), 2)]
    taus = [t for t in taus if t is not None]
    assert overall.tau == pytest.approx(sum(taus) / len(taus))
    assert sum(b["tasks"] for b in overall.tau_histogram) == len(multi)
    # Alphas from the summed per-task coincidences equal alpha over every unit at once.
    units: dict = {"rank": [], "rating": [], "flag": []}
    for task_id in multi:
        per_completion: dict = {}
        for annotator, ranking in documents[task_id].items():
            for e in ranking:
                per_completion.setdefault(e["completion"], {})[annotator] = e
        for entries in per_completion.values():
            units["rank"].append({a: e["rank"] for a, e in entries.items()})
            units["rating"].append({a: e["rating"] for a, e in entries.items()})
            for flag in project.flags:
                units["flag"].append({a: int(flag in e["flags"]) for a, e in entries.items()})
    assert overall.rank_alpha == pytest.approx(agreement.krippendorff_alpha(units["rank"]))
    assert overall.rating_alpha == pytest.approx(agreement.krippendorff_alpha(units["rating"]))
    assert overall.flag_alpha == pytest.approx(
        agreement.krippendorff_alpha(units["flag"], "nominal"))
    # Each stored consensus is the pure ranked-pairs consensus of the raw rankings.
    for task_id, consensus in TaskAgreement.objects.values_list("task_id", "consensus"):
        expected = agreement.consensus_ranked_pairs(list(multi[task_id].values()))
        assert {int(c): r for c, r in consensus.items()} == expected
    assert sum(w["tasks"] for w in overall.trend) == overall.tasks


def test_identical_and_reversed_rankings(project, bob, dana):
    project_update(project=project, overlap=2)
    prompts_import(project=project, records=records_from_items(rank_items(2)))
    for user, reverse in ((bob, False), (dana, True)):
        for _ in range(2):
            a = assignment_claim_next(project=project, annotator=user)
            ids = sorted(a.display_order, reverse=reverse and a.task_id % 2 == 0)
            ranking = [{"completion": c, "rank": i + 1, "rating": 4} for i, c in enumerate(ids)]
            annotation_submit(assignment=a, data={"ranking": ranking})
    agreement_refresh(project=project)
    per_task = dict(TaskAgreement.objects.values_list("task_id", "pair_sum"))
    assert sorted(per_task.values()) == [0.0, 1.0]
    assert ProjectAgreement.objects.get(project=project).agreement == pytest.approx(0.5)


def test_the_agreement_api_is_for_leads_and_engineers(project, api, alice, bob, charlie, erin):
    url = f"/api/v1/projects/{project.pk}/agreement/"
    assert api(charlie).get(url).status_code == 404
    assert api(bob).get(url).status_code == 403
    agreement_refresh(project=project)
    body = api(erin).get(url).json()
    assert body["agreement"] is None and body["tasks"] == 0
    assert body["reference"]["instructgpt_training_labelers"] == 0.726
    assert api(alice).get(url).status_code == 200


def test_the_api_reports_the_interval_and_each_annotator(project, api, alice):
    project_update(project=project, overlap=2, per_user_cap=1000)
    prompts_import(project=project, records=records_from_items(rank_items(12)))
    people = _annotators(project, 3)
    rng = random.Random(1)
    while any([_submit_random(project, p, rng) for p in people]):  # a round each
        pass
    agreement_refresh(project=project)
    body = api(alice).get(f"/api/v1/projects/{project.pk}/agreement/").json()
    low, high = body["interval"]
    assert low <= body["agreement"] <= high and body["tasks"] == 12
    assert {row["annotator"] for row in body["annotators"]} == {"m0", "m1", "m2"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=2, max_size=9), st.randoms())
def test_the_fast_pair_routines_equal_the_reference(ranks, rnd):
    from labeling.services.metrics import _consensus_pattern, _ordered, _rank_pair

    ids = list(range(100, 100 + len(ranks)))
    a = dict(zip(ids, ranks, strict=True))
    other = ranks[:]
    rnd.shuffle(other)
    b = dict(zip(ids, other, strict=True))
    value, tau = _rank_pair(_ordered(a)[1], _ordered(b)[1])
    assert value == agreement.pairwise_agreement(a, b)
    expected_tau = agreement.kendall_tau_b(a, b)
    assert tau == (None if expected_tau is None else pytest.approx(expected_tau))
    patterns = tuple(sorted([_ordered(a)[1], _ordered(b)[1], _ordered(b)[1]]))
    consensus = dict(zip(ids, _consensus_pattern(patterns), strict=True))
    assert consensus == agreement.consensus_ranked_pairs([a, b, b])


def _filled_project(project, n_tasks=40):
    project_update(project=project, overlap=3, per_user_cap=1000)
    prompts_import(project=project, records=records_from_items(rank_items(n_tasks)))
    people = _annotators(project, 4)
    rng = random.Random(3)
    while any([_submit_random(project, p, rng) for p in people]):
        pass


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_writer_thread_stores_what_the_inline_path_stores(postgres, project, monkeypatch):
    from django.db import transaction

    from labeling.services import metrics

    monkeypatch.setattr(metrics, "REFRESH_BATCH", 7)  # several overlapped writes
    _filled_project(project)
    assert metrics.agreement_refresh(project=project, full=True) == 40  # the thread
    threaded = _snapshot(project)
    TaskAgreement.objects.all().delete()
    AnnotatorTaskAgreement.objects.all().delete()
    with transaction.atomic():  # inside a transaction: the inline path
        metrics.agreement_refresh(project=project, full=True)
    assert _snapshot(project) == threaded


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_failed_refresh_writes_nothing(postgres, project, monkeypatch):
    from labeling.services import metrics

    monkeypatch.setattr(metrics, "REFRESH_BATCH", 5)
    _filled_project(project, n_tasks=20)
    real, calls = metrics._task_figures, []

    def failing(annotations, asked_flags):
        calls.append(1)
        if len(calls) > 12:  # after two batches went to the writer
            raise RuntimeError("boom")
        return real(annotations, asked_flags)

    monkeypatch.setattr(metrics, "_task_figures", failing)
    with pytest.raises(RuntimeError):
        metrics.agreement_refresh(project=project, full=True)
    assert not TaskAgreement.objects.exists()
    assert not AnnotatorTaskAgreement.objects.exists()
