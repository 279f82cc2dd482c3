"""Stored agreement figures: refreshed in batches by a periodic job, read by the API.

Dashboards never compute agreement on request: they read TaskAgreement,
AnnotatorTaskAgreement and ProjectAgreement, which this module keeps up to date from
the annotations (the pure maths lives in labeling.agreement).
"""

from collections import defaultdict
from itertools import combinations

from django.db import transaction
from django.db.models import F, Sum

from labeling import agreement
from labeling.models import (
    Annotation,
    AnnotatorTaskAgreement,
    ProjectAgreement,
    Task,
    TaskAgreement,
)

REFRESH_BATCH = 2000
_BOOTSTRAP_PARTS = agreement.RatioStatistic(lambda parts: parts)


def _task_parts(rankings: dict) -> tuple[float, int, dict]:
    """Return (pair sum, pair count, {annotator: (sum, count)}) for one task's rankings."""
    pair_sum, pair_count = 0.0, 0
    per_annotator: dict = defaultdict(lambda: [0.0, 0])
    for x, y in combinations(sorted(rankings), 2):
        value = agreement.pairwise_agreement(rankings[x], rankings[y])
        if value is None:
            continue
        pair_sum += value
        pair_count += 1
        for annotator in (x, y):
            per_annotator[annotator][0] += value
            per_annotator[annotator][1] += 1
    return pair_sum, pair_count, per_annotator


def _refresh_batch(project, task_ids: list[int]) -> None:
    rankings: dict[int, dict] = defaultdict(dict)
    counts: dict[int, int] = defaultdict(int)
    rows = Annotation.objects.filter(task_id__in=task_ids, kind=Task.Kind.RANK).values_list(
        "task_id", "annotator_id", "ranking"
    )
    for task_id, annotator_id, ranking in rows:
        rankings[task_id][annotator_id] = agreement.ranks_of(ranking or [])
        counts[task_id] += 1
    task_rows, annotator_rows = [], []
    for task_id in task_ids:
        pair_sum, pair_count, per_annotator = _task_parts(rankings.get(task_id, {}))
        task_rows.append(TaskAgreement(
            task_id=task_id, project=project, annotations=counts[task_id],
            pair_sum=pair_sum, pair_count=pair_count,
        ))
        annotator_rows += [
            AnnotatorTaskAgreement(task_id=task_id, annotator_id=annotator, project=project,
                                   agree_sum=parts[0], pair_count=parts[1])
            for annotator, parts in per_annotator.items()
        ]
    with transaction.atomic():
        TaskAgreement.objects.bulk_create(
            task_rows, update_conflicts=True, unique_fields=["task"],
            update_fields=["annotations", "pair_sum", "pair_count", "computed_at"],
        )
        AnnotatorTaskAgreement.objects.bulk_create(
            annotator_rows, update_conflicts=True, unique_fields=["task", "annotator"],
            update_fields=["agree_sum", "pair_count"],
        )


def agreement_refresh(*, project, full: bool = False) -> int:
    """Recompute the stored agreement of tasks whose annotations changed; return how many.

    With ``full`` every multiply-ranked task is recomputed (the management command).
    Then the project's overall figure and its 95% bootstrap interval are stored.
    """
    tasks = Task.objects.filter(
        project=project, kind=Task.Kind.RANK, is_gold=False, submitted_count__gte=2
    )
    if not full:
        tasks = tasks.exclude(agreement__annotations=F("submitted_count"))
    task_ids = list(tasks.order_by("id").values_list("id", flat=True))
    for start in range(0, len(task_ids), REFRESH_BATCH):
        _refresh_batch(project, task_ids[start : start + REFRESH_BATCH])
    if task_ids or full or not ProjectAgreement.objects.filter(project=project).exists():
        _store_project_agreement(project)
    return len(task_ids)


def _store_project_agreement(project) -> None:
    parts = list(
        TaskAgreement.objects.filter(project=project, pair_count__gt=0).values_list(
            "pair_sum", "pair_count"
        )
    )
    overall = _BOOTSTRAP_PARTS(parts) if parts else None
    interval = agreement.bootstrap_ci(parts, _BOOTSTRAP_PARTS) if parts else None
    ProjectAgreement.objects.update_or_create(
        project=project,
        defaults={
            "agreement": overall,
            "interval_low": interval[0] if interval else None,
            "interval_high": interval[1] if interval else None,
            "tasks": len(parts),
            "pairs": sum(count for _, count in parts),
        },
    )


def annotator_agreements(*, project) -> list[dict]:
    """Return each annotator's stored leave-one-out agreement, lowest first."""
    rows = (
        AnnotatorTaskAgreement.objects.filter(project=project, pair_count__gt=0)
        .values("annotator_id", "annotator__username")
        .annotate(agree=Sum("agree_sum"), pairs=Sum("pair_count"))
    )
    result = [
        {
            "annotator": row["annotator__username"],
            "agreement": row["agree"] / row["pairs"],
            "pairs": row["pairs"],
        }
        for row in rows
    ]
    return sorted(result, key=lambda r: (r["agreement"], r["annotator"]))
