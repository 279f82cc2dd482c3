"""Stored agreement figures: refreshed in batches by a periodic job, read by the API.

Dashboards never compute agreement on request: they read TaskAgreement,
AnnotatorTaskAgreement and ProjectAgreement, which this module keeps up to date from
the annotations (the pure maths lives in labeling.agreement).

A refresh streams (task, annotator, ranking) rows in task order from one query, computes
each task with a cached rank-pattern comparison equal to agreement.pairwise_agreement,
and writes with set-based upserts (on PostgreSQL: COPY into temporary tables, from a
second connection that works while this one computes). bench/agreement_bench.py times it.
"""

import json
import queue
import threading
from collections.abc import Callable, Iterator
from functools import lru_cache
from itertools import combinations

from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from labeling import agreement
from labeling.models import (
    Annotation,
    AnnotatorTaskAgreement,
    ProjectAgreement,
    Task,
    TaskAgreement,
)

REFRESH_BATCH = 5000  # tasks per write; the last write is not overlapped
_FETCH = 10000  # rows fetched per round trip from the streaming cursor
_BOOTSTRAP_PARTS = agreement.RatioStatistic(lambda parts: parts)


def _ordered(ranks: dict) -> tuple[tuple, tuple] | None:
    """Return (completions in sorted order, their ranks in that order), None if unsortable."""
    try:
        keys = tuple(sorted(ranks))
    except TypeError:  # mixed id types: leave it to the reference routine
        return None
    return keys, tuple(map(ranks.__getitem__, keys))


@lru_cache(maxsize=1 << 16)
def _rank_agreement(a: tuple, b: tuple) -> float | None:
    # agreement.pairwise_agreement for two rankings of the same completions, given as
    # rank tuples in one completion order: a pair counts when either ranking orders it
    # and agrees when both order it the same way. Both divide the same two integers, so
    # the floats are identical; only the rank pattern matters, hence the cache (K=4 has
    # 75 patterns).
    counted = agreed = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            x = (a[i] > a[j]) - (a[i] < a[j])
            y = (b[i] > b[j]) - (b[i] < b[j])
            if x or y:
                counted += 1
                agreed += x == y
    return agreed / counted if counted else None


def _task_parts(annotations: dict) -> tuple[float, int, dict]:
    """Return (pair sum, pair count, {annotator: [sum, count]}) for one task.

    ``annotations``: {annotator: (ranks, ordered)}, ordered from ``_ordered``.
    """
    pair_sum, pair_count = 0.0, 0
    per_annotator: dict = {}
    for x, y in combinations(sorted(annotations), 2):
        ranks_x, ordered_x = annotations[x]
        ranks_y, ordered_y = annotations[y]
        if ordered_x is not None and ordered_y is not None and ordered_x[0] == ordered_y[0]:
            value = _rank_agreement(ordered_x[1], ordered_y[1])
        else:
            value = agreement.pairwise_agreement(ranks_x, ranks_y)
        if value is None:
            continue
        pair_sum += value
        pair_count += 1
        for annotator in (x, y):
            parts = per_annotator.setdefault(annotator, [0.0, 0])
            parts[0] += value
            parts[1] += 1
    return pair_sum, pair_count, per_annotator


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _stale_rows(cursor, project, full: bool) -> Iterator[tuple]:
    """Yield (task_id, annotator_id, ranking) in task order, annotator None for no annotation.

    Every multiply-ranked task comes, with ``full``; otherwise those whose stored count
    differs from their submitted count (or that have no stored row).
    """
    stale = "" if full else "AND (ta.annotations IS NULL OR ta.annotations <> t.submitted_count)"
    cursor.execute(
        f"""
        SELECT t.id, a.annotator_id, a.ranking
        FROM {_table(Task)} t
        LEFT JOIN {_table(TaskAgreement)} ta ON ta.task_id = t.id
        LEFT JOIN {_table(Annotation)} a ON a.task_id = t.id AND a.kind = %s
        WHERE t.project_id = %s AND t.kind = %s AND t.is_gold = %s AND t.submitted_count >= 2
        {stale}
        ORDER BY t.id, a.id
        """,
        [Task.Kind.RANK, project.pk, Task.Kind.RANK, False],
    )
    if connection.vendor != "postgresql":
        # SQLite would step the SELECT while the same connection writes the tables it
        # reads; PostgreSQL cursors read a snapshot taken when they open.
        yield from cursor.fetchall()
        return
    while rows := cursor.fetchmany(_FETCH):
        yield from rows


def _tasks(rows: Iterator[tuple]) -> Iterator[tuple[int, int, dict]]:
    """Group streamed rows into (task_id, annotation count, {annotator: (ranks, ordered)})."""
    current, count, annotations = None, 0, {}
    for task_id, annotator_id, ranking in rows:
        if task_id != current:
            if current is not None:
                yield current, count, annotations
            current, count, annotations = task_id, 0, {}
        if annotator_id is None:  # a task without any rank annotation (LEFT JOIN)
            continue
        if isinstance(ranking, str):  # SQLite hands JSON back as text
            ranking = json.loads(ranking)
        ranks = agreement.ranks_of(ranking or [])
        annotations[annotator_id] = (ranks, _ordered(ranks))
        count += 1
    if current is not None:
        yield current, count, annotations


_TASK_COLUMNS = "task_id, project_id, annotations, pair_sum, pair_count, computed_at"
_ANNOTATOR_COLUMNS = "task_id, annotator_id, project_id, agree_sum, pair_count"
_TASK_UPSERT = (
    "ON CONFLICT (task_id) DO UPDATE SET annotations = EXCLUDED.annotations, "
    "pair_sum = EXCLUDED.pair_sum, pair_count = EXCLUDED.pair_count, "
    "computed_at = EXCLUDED.computed_at"
)
_ANNOTATOR_UPSERT = (
    "ON CONFLICT (task_id, annotator_id) DO UPDATE SET agree_sum = EXCLUDED.agree_sum, "
    "pair_count = EXCLUDED.pair_count WHERE ({table}.agree_sum, {table}.pair_count) "
    "IS DISTINCT FROM "
    "(EXCLUDED.agree_sum, EXCLUDED.pair_count)"
)


def _write(cursor, task_rows: list[tuple], annotator_rows: list[tuple]) -> None:
    """Upsert TaskAgreement and AnnotatorTaskAgreement rows (tuples in column order)."""
    if connection.vendor == "postgresql":
        # COPY into temporary tables, then one INSERT ... SELECT each: no per-row
        # statement and no model instances.
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS agreement_task_tmp (task_id bigint, "
            "project_id bigint, annotations integer, pair_sum double precision, "
            "pair_count integer, computed_at timestamptz) ON COMMIT DROP"
        )
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS agreement_annotator_tmp (task_id bigint, "
            "annotator_id bigint, project_id bigint, agree_sum double precision, "
            "pair_count integer) ON COMMIT DROP"
        )
        for tmp, columns, rows, target, upsert in (
            ("agreement_task_tmp", _TASK_COLUMNS, task_rows, TaskAgreement, _TASK_UPSERT),
            ("agreement_annotator_tmp", _ANNOTATOR_COLUMNS, annotator_rows,
             AnnotatorTaskAgreement, _ANNOTATOR_UPSERT),
        ):
            cursor.execute(f"TRUNCATE {tmp}")
            with cursor.copy(f"COPY {tmp} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO {_table(target)} ({columns}) SELECT {columns} FROM {tmp} "
                + upsert.format(table=_table(target))
            )
        return
    placeholders = ", ".join(["%s"] * 6)
    cursor.executemany(
        f"INSERT INTO {_table(TaskAgreement)} ({_TASK_COLUMNS}) VALUES ({placeholders}) "
        f"{_TASK_UPSERT}",
        task_rows,
    )
    cursor.executemany(
        f"INSERT INTO {_table(AnnotatorTaskAgreement)} ({_ANNOTATOR_COLUMNS}) "
        f"VALUES (%s, %s, %s, %s, %s) "
        + _ANNOTATOR_UPSERT.format(table=_table(AnnotatorTaskAgreement)),
        annotator_rows,
    )


def _compute(project, full: bool, write: Callable[[list, list], None]) -> int:
    """Stream the tasks to refresh, hand their rows to ``write`` in batches; return how many."""
    now = timezone.now()
    count = 0
    task_rows: list[tuple] = []
    annotator_rows: list[tuple] = []
    with connection.chunked_cursor() as reader:
        for task_id, annotations, rankings in _tasks(_stale_rows(reader, project, full)):
            pair_sum, pair_count, per_annotator = _task_parts(rankings)
            task_rows.append((task_id, project.pk, annotations, pair_sum, pair_count, now))
            annotator_rows += [
                (task_id, annotator, project.pk, parts[0], parts[1])
                for annotator, parts in per_annotator.items()
            ]
            count += 1
            if len(task_rows) >= REFRESH_BATCH:
                write(task_rows, annotator_rows)
                task_rows, annotator_rows = [], []
    if task_rows:
        write(task_rows, annotator_rows)
    return count


def _compute_with_writer_thread(project, full: bool) -> int:
    """Run ``_compute`` while a second connection writes its batches.

    Most of a large refresh is PostgreSQL's work on the upserts (index entries, foreign
    key checks); on its own connection it runs on another core while this one computes.
    The writer commits all batches at once, and rolls them back if the computation fails.
    """
    batches: queue.Queue = queue.Queue(maxsize=2)
    failures: list[BaseException] = []
    abort = object()

    def drain() -> None:
        batch: object = ()  # neither None nor abort: a failure before the loop still drains
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                while (batch := batches.get()) is not None:
                    if batch is abort:
                        raise RuntimeError("agreement refresh failed; writes rolled back")
                    _write(cursor, *batch)
        except BaseException as exc:  # re-raised in the calling thread below
            failures.append(exc)
            while batch is not None and batch is not abort:  # let the producer finish
                batch = batches.get()
        finally:
            connection.close()  # the thread's own connection

    writer = threading.Thread(target=drain, name="agreement-writer")
    writer.start()
    done = False
    try:
        with transaction.atomic():
            count = _compute(project, full, lambda *batch: batches.put(batch))
        done = True
    finally:
        batches.put(None if done else abort)
        writer.join()
    if failures:
        raise failures[0]
    return count


def agreement_refresh(*, project, full: bool = False) -> int:
    """Recompute the stored agreement of tasks whose annotations changed; return how many.

    With ``full`` every multiply-ranked task is recomputed (the management command).
    Then the project's overall figure and its 95% bootstrap interval are stored.
    """
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        count = _compute_with_writer_thread(project, full)
    else:
        # Inside a caller's transaction a second connection could not see its rows.
        with transaction.atomic(), connection.cursor() as writer:
            count = _compute(project, full, lambda t, a: _write(writer, t, a))
    if count or full or not ProjectAgreement.objects.filter(project=project).exists():
        _store_project_agreement(project)
    return count


def _store_project_agreement(project) -> None:
    parts = list(
        TaskAgreement.objects.filter(project=project, pair_count__gt=0)
        .order_by("task_id")  # a fixed order: the bootstrap resamples by position
        .values_list("pair_sum", "pair_count")
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
