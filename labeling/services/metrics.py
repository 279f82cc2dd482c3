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
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from itertools import combinations

from django.db import connection, transaction
from django.db.models import Avg, Sum
from django.utils import timezone
from django.utils.dateparse import parse_datetime

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
def _rank_pair(a: tuple, b: tuple) -> tuple[float | None, float | None]:
    """Return (pairwise agreement, Kendall tau-b) of two rank tuples in one completion order.

    Equal to agreement.pairwise_agreement and agreement.kendall_tau_b on the same
    rankings: a pair counts for agreement when either ranking orders it and agrees when
    both order it the same way; tau-b = (C - D) / sqrt((n0 - n1) (n0 - n2)). Only the
    rank pattern matters, hence the cache (K=4 has 75 patterns).
    """
    counted = agreed = concordant = discordant = ties_a = ties_b = pairs = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            x = (a[i] > a[j]) - (a[i] < a[j])
            y = (b[i] > b[j]) - (b[i] < b[j])
            pairs += 1
            ties_a += not x
            ties_b += not y
            if x or y:
                counted += 1
                agreed += x == y
            if x and y:
                concordant += x == y
                discordant += x != y
    denominator = ((pairs - ties_a) * (pairs - ties_b)) ** 0.5
    tau = (concordant - discordant) / denominator if denominator else None
    return (agreed / counted if counted else None), tau


@lru_cache(maxsize=1 << 16)
def _consensus_pattern(patterns: tuple) -> tuple:
    """Return the ranked-pairs consensus of rank tuples (one completion order) as a tuple."""
    consensus = agreement.consensus_ranked_pairs(
        [dict(enumerate(ranks)) for ranks in patterns]
    )
    return tuple(consensus[i] for i in range(len(patterns[0])))


@dataclass
class _TaskFigures:
    pair_sum: float = 0.0
    pair_count: int = 0
    tau_sum: float = 0.0
    tau_count: int = 0
    consensus: dict = field(default_factory=dict)
    # {annotator: [agreement sum with the others, their count, agreement with consensus]}
    per_annotator: dict = field(default_factory=dict)
    coincidences: dict = field(default_factory=dict)


def _pair(first, second) -> tuple[float | None, float | None]:
    (ranks_x, ordered_x, _), (ranks_y, ordered_y, _) = first, second
    if ordered_x is not None and ordered_y is not None and ordered_x[0] == ordered_y[0]:
        return _rank_pair(ordered_x[1], ordered_y[1])
    return (agreement.pairwise_agreement(ranks_x, ranks_y),
            agreement.kendall_tau_b(ranks_x, ranks_y))


def _consensus(annotations: dict) -> dict:
    ordered = [ordered for _, ordered, _ in annotations.values()]
    if all(o is not None and o[0] == ordered[0][0] for o in ordered):
        keys = ordered[0][0]
        return dict(zip(keys, _consensus_pattern(tuple(sorted(o[1] for o in ordered))),
                        strict=True))
    return agreement.consensus_ranked_pairs([ranks for ranks, _, _ in annotations.values()])


@lru_cache(maxsize=1 << 14)
def _unit_coincidences(values: tuple) -> tuple:
    """Return one unit's coincidences as ((c, k), o) pairs; ``values`` sorted (cache key)."""
    return tuple(agreement.coincidences([values]).items())


def _coincidences(annotations: dict, asked_flags: list) -> dict:
    """Return the task's rank, rating and flag coincidences (Krippendorff units).

    Units are cached by their sorted values (three annotators rating 1-7 give only 84
    distinct units); a response nobody flagged adds m x (flags asked) to o(0, 0).
    """
    ranks: dict = {}
    ratings: dict = {}
    seen: dict = {}
    flagged: dict = {}
    for _, _, entries in annotations.values():
        for entry in entries:
            completion = entry.get("completion")
            seen[completion] = seen.get(completion, 0) + 1
            if entry.get("rank") is not None:
                ranks.setdefault(completion, []).append(entry["rank"])
            if entry.get("rating") is not None:
                ratings.setdefault(completion, []).append(entry["rating"])
            if entry.get("flags"):
                flagged.setdefault(completion, []).append(entry["flags"])
    result = {}
    for name, units in (("rank", ranks), ("rating", ratings)):
        o: dict = {}
        for values in units.values():
            if len(values) > 1:
                for key, value in _unit_coincidences(tuple(sorted(values))):
                    o[key] = o.get(key, 0.0) + value
        if o:
            result[name] = o
    o = {}
    for completion, m in seen.items():
        if m < 2:
            continue
        if completion in flagged:
            flag_sets = flagged[completion] + [()] * (m - len(flagged[completion]))
            agreement.coincidences_add(o, agreement.flag_coincidences(flag_sets, asked_flags))
        elif asked_flags:
            o[(0, 0)] = o.get((0, 0), 0.0) + m * len(asked_flags)
    if o:
        result["flag"] = o
    return {name: [[c, k, v] for (c, k), v in sorted(o.items())] for name, o in result.items()}


def _task_figures(annotations: dict, asked_flags: list) -> _TaskFigures:
    """Return one task's stored figures from ``{annotator: (ranks, ordered, entries)}``.

    ``ordered`` comes from ``_ordered``; ``entries`` is the annotation's ranking document.
    """
    figures = _TaskFigures()
    per_annotator = figures.per_annotator
    for x, y in combinations(sorted(annotations), 2):
        value, tau = _pair(annotations[x], annotations[y])
        if tau is not None:
            figures.tau_sum += tau
            figures.tau_count += 1
        if value is None:
            continue
        figures.pair_sum += value
        figures.pair_count += 1
        for annotator in (x, y):
            parts = per_annotator.setdefault(annotator, [0.0, 0, None])
            parts[0] += value
            parts[1] += 1
    figures.consensus = _consensus(annotations)
    ordered_consensus = _ordered(figures.consensus)
    for annotator, (ranks, ordered, entries) in annotations.items():
        if annotator in per_annotator:
            per_annotator[annotator][2] = _pair(
                (ranks, ordered, entries), (figures.consensus, ordered_consensus, None)
            )[0]
    figures.coincidences = _coincidences(annotations, asked_flags)
    return figures


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _stale_rows(cursor, project, full: bool) -> Iterator[tuple]:
    """Yield (task_id, annotator_id, ranking, created_at) in task order.

    The annotator is None for a task without any rank annotation.

    Every multiply-ranked task comes, with ``full``; otherwise those whose stored count
    differs from their submitted count (or that have no stored row).
    """
    stale = "" if full else "AND (ta.annotations IS NULL OR ta.annotations <> t.submitted_count)"
    cursor.execute(
        f"""
        SELECT t.id, a.annotator_id, a.ranking, a.created_at
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


def _tasks(rows: Iterator[tuple]) -> Iterator[tuple[int, int, dict, object]]:
    """Group streamed rows into (task_id, count, {annotator: (ranks, ordered, entries)}, last).

    ``last`` is when the task's latest annotation was made.
    """
    current, count, annotations, last = None, 0, {}, None
    for task_id, annotator_id, ranking, created_at in rows:
        if task_id != current:
            if current is not None:
                yield current, count, annotations, last
            current, count, annotations, last = task_id, 0, {}, None
        if annotator_id is None:  # a task without any rank annotation (LEFT JOIN)
            continue
        if isinstance(ranking, str):  # SQLite hands JSON back as text
            ranking = json.loads(ranking)
        if isinstance(created_at, str):
            created_at = parse_datetime(created_at)
        entries = ranking or []
        ranks = agreement.ranks_of(entries)
        annotations[annotator_id] = (ranks, _ordered(ranks), entries)
        count += 1
        last = created_at if last is None or created_at > last else last
    if current is not None:
        yield current, count, annotations, last


_TASK_FIELDS = ["task_id", "project_id", "annotations", "pair_sum", "pair_count", "tau_sum",
                "tau_count", "consensus", "coincidences", "last_annotated_at", "computed_at"]
_TASK_COLUMNS = ", ".join(_TASK_FIELDS)
_ANNOTATOR_FIELDS = ["task_id", "annotator_id", "project_id", "agree_sum", "pair_count",
                     "consensus_agree"]
_ANNOTATOR_COLUMNS = ", ".join(_ANNOTATOR_FIELDS)
_TASK_COMPARED = _TASK_FIELDS[2:-1]  # all but the keys and computed_at
_TASK_UPSERT = (
    "ON CONFLICT (task_id) DO UPDATE SET "
    + ", ".join(f"{f} = EXCLUDED.{f}" for f in _TASK_FIELDS[2:])
    # Rows whose figures did not change are not rewritten (a full recompute mostly).
    + " WHERE (" + ", ".join(f"{{table}}.{f}" for f in _TASK_COMPARED) + ") IS DISTINCT FROM ("
    + ", ".join(f"EXCLUDED.{f}" for f in _TASK_COMPARED) + ")"
)
_ANNOTATOR_UPSERT = (
    "ON CONFLICT (task_id, annotator_id) DO UPDATE SET agree_sum = EXCLUDED.agree_sum, "
    "pair_count = EXCLUDED.pair_count, consensus_agree = EXCLUDED.consensus_agree "
    "WHERE ({table}.agree_sum, {table}.pair_count, {table}.consensus_agree) "
    "IS DISTINCT FROM (EXCLUDED.agree_sum, EXCLUDED.pair_count, EXCLUDED.consensus_agree)"
)


def _write(cursor, task_rows: list[tuple], annotator_rows: list[tuple]) -> None:
    """Upsert TaskAgreement and AnnotatorTaskAgreement rows (tuples in column order)."""
    if connection.vendor == "postgresql":
        # COPY into temporary tables, then one INSERT ... SELECT each: no per-row
        # statement and no model instances.
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS agreement_task_tmp (task_id bigint, "
            "project_id bigint, annotations integer, pair_sum double precision, "
            "pair_count integer, tau_sum double precision, tau_count integer, "
            "consensus jsonb, coincidences jsonb, last_annotated_at timestamptz, "
            "computed_at timestamptz) ON COMMIT DROP"
        )
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS agreement_annotator_tmp (task_id bigint, "
            "annotator_id bigint, project_id bigint, agree_sum double precision, "
            "pair_count integer, consensus_agree double precision) ON COMMIT DROP"
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
    cursor.executemany(
        f"INSERT INTO {_table(TaskAgreement)} ({_TASK_COLUMNS}) "
        f"VALUES ({', '.join(['%s'] * len(_TASK_FIELDS))}) "
        + _TASK_UPSERT.format(table=_table(TaskAgreement)),
        task_rows,
    )
    cursor.executemany(
        f"INSERT INTO {_table(AnnotatorTaskAgreement)} ({_ANNOTATOR_COLUMNS}) "
        f"VALUES ({', '.join(['%s'] * len(_ANNOTATOR_FIELDS))}) "
        + _ANNOTATOR_UPSERT.format(table=_table(AnnotatorTaskAgreement)),
        annotator_rows,
    )


def _compute(project, full: bool, write: Callable[[list, list], None]) -> int:
    """Stream the tasks to refresh, hand their rows to ``write`` in batches; return how many."""
    now = timezone.now()
    count = 0
    task_rows: list[tuple] = []
    annotator_rows: list[tuple] = []
    asked_flags = list(project.flags or [])
    with connection.chunked_cursor() as reader:
        for task_id, annotations, rankings, last in _tasks(_stale_rows(reader, project, full)):
            f = _task_figures(rankings, asked_flags)
            task_rows.append((
                task_id, project.pk, annotations, f.pair_sum, f.pair_count, f.tau_sum,
                f.tau_count, json.dumps({str(c): r for c, r in f.consensus.items()}),
                json.dumps(f.coincidences), last, now,
            ))
            annotator_rows += [
                (task_id, annotator, project.pk, parts[0], parts[1], parts[2])
                for annotator, parts in f.per_annotator.items()
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


_TAU_BINS = 10  # over [-1, 1]
_ALPHA_LEVELS = {"rank": "ordinal", "rating": "ordinal", "flag": "nominal"}


def _week_of(moment) -> str:
    day = timezone.localtime(moment).date() if timezone.is_aware(moment) else moment.date()
    return (day - timedelta(days=day.weekday())).isoformat()


def _store_project_agreement(project) -> None:
    """Store the project's figures from its stored task rows (one pass over them)."""
    parts: list[tuple[float, int]] = []
    weeks: dict[str, list] = {}
    tau_sum, tau_count = 0.0, 0
    histogram = [0] * _TAU_BINS
    totals: dict[str, dict] = {name: {} for name in _ALPHA_LEVELS}
    rows = (
        TaskAgreement.objects.filter(project=project)
        .order_by("task_id")  # a fixed order: the bootstrap resamples by position
        .values_list("pair_sum", "pair_count", "tau_sum", "tau_count", "coincidences",
                     "last_annotated_at")
    )
    for pair_sum, pair_count, t_sum, t_count, coincident, last in rows.iterator(2000):
        if pair_count:
            parts.append((pair_sum, pair_count))
            if last is not None:
                weeks.setdefault(_week_of(last), []).append((pair_sum, pair_count))
        if t_count:
            tau_sum += t_sum
            tau_count += t_count
            mean = t_sum / t_count
            histogram[min(int((mean + 1) / 2 * _TAU_BINS), _TAU_BINS - 1)] += 1
        for name, triples in (coincident or {}).items():
            total = totals.get(name)
            if total is not None:
                for c, k, value in triples:
                    total[(c, k)] = total.get((c, k), 0.0) + value
    overall = _BOOTSTRAP_PARTS(parts) if parts else None
    interval = agreement.bootstrap_ci(parts, _BOOTSTRAP_PARTS) if parts else None
    trend = []
    for week in sorted(weeks):
        week_parts = weeks[week]
        week_interval = agreement.bootstrap_ci(week_parts, _BOOTSTRAP_PARTS)
        trend.append({
            "week": week, "agreement": _BOOTSTRAP_PARTS(week_parts), "tasks": len(week_parts),
            "low": week_interval[0] if week_interval else None,
            "high": week_interval[1] if week_interval else None,
        })
    consensus = AnnotatorTaskAgreement.objects.filter(
        project=project, consensus_agree__isnull=False
    ).aggregate(mean=Avg("consensus_agree"))["mean"]
    alphas = {name: agreement.alpha_from_coincidences(totals[name], level)
              for name, level in _ALPHA_LEVELS.items()}
    ProjectAgreement.objects.update_or_create(
        project=project,
        defaults={
            "agreement": overall,
            "interval_low": interval[0] if interval else None,
            "interval_high": interval[1] if interval else None,
            "tasks": len(parts),
            "pairs": sum(count for _, count in parts),
            "tau": tau_sum / tau_count if tau_count else None,
            "tau_histogram": [
                {"low": round(-1 + 2 * i / _TAU_BINS, 2),
                 "high": round(-1 + 2 * (i + 1) / _TAU_BINS, 2), "tasks": n}
                for i, n in enumerate(histogram)
            ],
            "rank_alpha": alphas["rank"],
            "rating_alpha": alphas["rating"],
            "flag_alpha": alphas["flag"],
            "consensus_agreement": consensus,
            "trend": trend,
        },
    )


def annotator_agreements(*, project) -> list[dict]:
    """Return each annotator's stored leave-one-out and consensus agreement, lowest first."""
    rows = (
        AnnotatorTaskAgreement.objects.filter(project=project, pair_count__gt=0)
        .values("annotator_id", "annotator__username")
        .annotate(agree=Sum("agree_sum"), pairs=Sum("pair_count"),
                  consensus=Avg("consensus_agree"))
    )
    result = [
        {
            "annotator": row["annotator__username"],
            "annotator_id": row["annotator_id"],
            "agreement": row["agree"] / row["pairs"],
            "consensus_agreement": row["consensus"],
            "pairs": row["pairs"],
        }
        for row in rows
    ]
    return sorted(result, key=lambda r: (r["agreement"], r["annotator"]))
