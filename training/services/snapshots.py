"""Dataset snapshots: a filter over a project's labels, built once into files per split.

A snapshot is created with its filter and policies and built as a job (modelhub's job
mechanism, default queue). The build streams annotations from the database in task
order (a server-side cursor on PostgreSQL), a batch of tasks at a time, turns them into
rows with the pure formats in training.datasets, and writes one JSONL file per split
(and Parquet on request) into a temporary directory renamed into place at the end, with
a Hugging Face dataset card and the list of task ids. Memory stays constant whatever
the project's size; the same filter on the same data gives the same content hash.
"""

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, TextField
from django.db.models.functions import Cast, NullIf
from django.utils import timezone

from labeling.agreement import ranks_of
from labeling.models import (
    Annotation,
    Membership,
    Prompt,
    ReviewStatus,
    Split,
    Task,
    TaskAgreement,
    TaskCompletion,
)
from labeling.selectors import demonstrations_for_training
from modelhub.models import Job
from modelhub.services.jobs import JobContext, job_create, job_handler
from training.datasets import formats
from training.datasets.card import dataset_card
from training.models import DatasetSnapshot

TASK_BATCH = 500  # tasks whose prompts and responses are fetched together
FETCH = 5000  # rows per round trip of the streaming cursor
PARQUET_BATCH = 10_000  # rows per Parquet row group


class SnapshotError(ValueError):
    """A snapshot that cannot be created as asked."""


_FILTER_KEYS = {"splits", "categories", "since", "until", "min_agreement", "exclude_flags",
                "accepted_only", "exclude_annotators", "exclude_paused"}


def _checked_filters(filters: dict) -> dict:
    """Return the filter with known keys only, each of the right type, in a fixed form."""
    unknown = set(filters) - _FILTER_KEYS
    if unknown:
        raise SnapshotError(f"unknown filter(s): {', '.join(sorted(unknown))}")
    clean: dict = {}
    for key in ("splits", "categories", "exclude_flags"):
        values = filters.get(key) or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SnapshotError(f"{key} must be a list of names")
        if values:
            clean[key] = sorted(set(values))
    bad_splits = set(clean.get("splits", [])) - set(Split.values)
    if bad_splits:
        raise SnapshotError(f"unknown split(s): {', '.join(sorted(bad_splits))}")
    for key in ("since", "until"):
        if filters.get(key):
            try:
                clean[key] = date.fromisoformat(str(filters[key])).isoformat()
            except ValueError:
                raise SnapshotError(f"{key} must be a date like 2026-01-31") from None
    if filters.get("min_agreement") not in (None, ""):
        value = filters["min_agreement"]
        if not isinstance(value, int | float) or not 0 <= value <= 1:
            raise SnapshotError("min_agreement must be a number from 0 to 1")
        clean["min_agreement"] = float(value)
    annotators = filters.get("exclude_annotators") or []
    if not isinstance(annotators, list) or not all(isinstance(a, int) for a in annotators):
        raise SnapshotError("exclude_annotators must be a list of user ids")
    if annotators:
        clean["exclude_annotators"] = sorted(set(annotators))
    for key in ("accepted_only", "exclude_paused"):
        if filters.get(key):
            clean[key] = True
    return clean


def snapshot_create(*, project, kind: str, name: str = "", filters: dict | None = None,
                    merge: str = DatasetSnapshot.Merge.PER_ANNOTATOR,
                    pair_policy: str = DatasetSnapshot.PairPolicy.ALL, margin: bool = False,
                    parquet: bool = False, license: str = "other",
                    created_by=None) -> DatasetSnapshot:
    """Validate a snapshot's filter and policies and queue its build."""
    if kind not in DatasetSnapshot.Kind.values:
        raise SnapshotError(f"kind must be one of {', '.join(DatasetSnapshot.Kind.values)}")
    if merge not in DatasetSnapshot.Merge.values:
        raise SnapshotError(f"merge must be one of {', '.join(DatasetSnapshot.Merge.values)}")
    if pair_policy not in DatasetSnapshot.PairPolicy.values:
        raise SnapshotError("pair_policy must be all or adjacent")
    name = (name or "").strip() or f"{kind} {timezone.now():%Y-%m-%d %H:%M}"
    clean = _checked_filters(filters or {})
    with transaction.atomic():
        job = job_create(project=project, kind=Job.Kind.SNAPSHOT, queue="default",
                         created_by=created_by)
        return DatasetSnapshot.objects.create(
            project=project, job=job, name=name[:100], kind=kind, filters=clean, merge=merge,
            pair_policy=pair_policy, margin=margin, parquet=parquet,
            license=(license or "other")[:50], created_by=created_by,
        )


def snapshot_root() -> Path:
    """Return the directory snapshots are written under."""
    return Path(settings.SNAPSHOT_ROOT)


# --- reading the database --------------------------------------------------------------


def _annotator_filter(snapshot: DatasetSnapshot, filters: dict) -> Q:
    q = Q()
    if filters.get("exclude_annotators"):
        q &= ~Q(annotator_id__in=filters["exclude_annotators"])
    if filters.get("exclude_paused"):
        paused = Membership.objects.filter(project=snapshot.project, is_active=False)
        q &= ~Q(annotator_id__in=paused.values("user_id"))
    if filters.get("since"):
        q &= Q(created_at__date__gte=filters["since"])
    if filters.get("until"):
        q &= Q(created_at__date__lte=filters["until"])
    return q


def _prompt_filter(filters: dict, prefix: str) -> Q:
    q = Q()
    if filters.get("splits"):
        q &= Q(**{f"{prefix}split__in": filters["splits"]})
    if filters.get("categories"):
        q &= Q(**{f"{prefix}category__in": filters["categories"]})
    return q


def _stream(queryset, fields: list[str]) -> Iterator[tuple]:
    return queryset.values_list(*fields).iterator(chunk_size=FETCH)


def _rank_annotations(snapshot: DatasetSnapshot):
    """Return the rank annotations the snapshot's filter selects."""
    filters = snapshot.filters
    annotations = Annotation.objects.filter(
        _annotator_filter(snapshot, filters), _prompt_filter(filters, "task__prompt__"),
        project=snapshot.project, kind=Task.Kind.RANK, task__is_gold=False,
        ranking__isnull=False,
    )
    if "min_agreement" in filters:
        # Tasks ranked once have no agreement: with a minimum set, they are left out.
        annotations = annotations.alias(
            agreement=F("task__agreement__pair_sum") / NullIf(F("task__agreement__pair_count"),
                                                               0),
        ).filter(agreement__gte=filters["min_agreement"])
    return annotations


def _ranked(annotations) -> Iterator[tuple[int, list[tuple]]]:
    """Yield (task id, [(annotator id, ranking)]) in task order from rank annotations."""
    # The ranking as text, decoded here with orjson: Django's JSONField decoding (the
    # standard json module) was the largest cost of reading a million annotations.
    annotations = annotations.annotate(ranking_text=Cast("ranking", TextField()))
    # Task order only (the task index serves it without sorting every annotation); each
    # task's few annotations are put in annotator order here.
    rows = _stream(annotations.order_by("task_id"), ["task_id", "annotator_id", "ranking_text"])
    current, group = None, []
    for task_id, annotator_id, ranking in rows:
        if task_id != current:
            if group:
                yield current, sorted(group, key=_first)
            current, group = task_id, []
        group.append((annotator_id, orjson.loads(ranking)))
    if group:
        yield current, sorted(group, key=_first)


def _first(item):
    return item[0]


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _task_context(task_ids: list[int]) -> tuple[dict, dict, dict]:
    """Return {task: prompt fields}, {task: [(completion, text)]}, {task: agreement}."""
    prompts = {
        row[0]: row[1:]
        for row in Task.objects.filter(pk__in=task_ids).values_list(
            "id", "prompt_id", "prompt__text", "prompt__messages", "prompt__category",
            "prompt__split")
    }
    responses: dict[int, list] = {}
    for task_id, cid, text in TaskCompletion.objects.filter(task_id__in=task_ids).order_by(
            "task_id", "position").values_list("task_id", "completion_id", "completion__text"):
        responses.setdefault(task_id, []).append((cid, text))
    agreement = {
        task_id: pair_sum / count
        for task_id, pair_sum, count in TaskAgreement.objects.filter(
            task_id__in=task_ids, pair_count__gt=0).values_list("task_id", "pair_sum",
                                                                "pair_count")
    }
    return prompts, responses, agreement


def _prompt_of(text: str, messages) -> str | list:
    if isinstance(messages, str):
        messages = json.loads(messages)
    return messages if messages else text


def _conversational(snapshot: DatasetSnapshot) -> bool:
    """Return whether any selected prompt is a chat: then every row of the files is one."""
    prompts = Prompt.objects.filter(_prompt_filter(snapshot.filters, ""),
                                    project=snapshot.project, messages__isnull=False)
    return prompts.exists()


# --- writing files ---------------------------------------------------------------------


class _Files:
    """One JSONL file per split (and Parquet on request) in a temporary directory."""

    def __init__(self, directory: Path, parquet: bool):
        self.directory = directory
        self.parquet = parquet
        self.handles: dict = {}
        self.pending: dict[str, list] = {}
        self.writers: dict = {}
        self.categories: dict[str, dict[str, int]] = {}
        self.hash = formats.ContentHash()
        self.first: dict[str, dict] = {}  # each split's first row (for the dataset card)

    def write(self, split: str, category: str, row: dict) -> None:
        self.write_rows(split, category, (row,))

    def write_rows(self, split: str, category: str, rows) -> None:
        """Write rows of one split and category (hashed, counted, Parquet-buffered)."""
        handle = self.handles.get(split)
        if handle is None:
            handle = self.handles[split] = open(self.directory / f"{split}.jsonl", "wb")  # noqa: SIM115
        update, write = self.hash.update, handle.write
        pending = self.pending.setdefault(split, []) if self.parquet else None
        count = 0
        for row in rows:
            write(update(row, split=split))
            if count == 0:
                self.first.setdefault(split, row)
            count += 1
            if pending is not None:
                pending.append(row)
        per = self.categories.setdefault(split, {})
        per[category] = per.get(category, 0) + count
        if pending is not None and len(pending) >= PARQUET_BATCH:
            self._flush(split)

    def _flush(self, split: str) -> None:
        rows = self.pending.pop(split, [])
        if not rows:
            return
        writer = self.writers.get(split)
        table = pa.Table.from_pylist(rows, schema=writer.schema if writer else None)
        if writer is None:
            writer = self.writers[split] = pq.ParquetWriter(
                self.directory / f"{split}.parquet", table.schema)
        writer.write_table(table)

    def close(self) -> dict:
        """Close every file (fsynced) and return {split: {format: file name}}."""
        files: dict[str, dict] = {}
        for split, handle in self.handles.items():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            files[split] = {"jsonl": f"{split}.jsonl"}
        if self.parquet:
            for split in list(self.pending):
                self._flush(split)
            for split, writer in self.writers.items():
                writer.close()
                files[split]["parquet"] = f"{split}.parquet"
        return files


# --- building --------------------------------------------------------------------------


class _Builder:
    def __init__(self, snapshot: DatasetSnapshot, context: JobContext, directory: Path):
        self.snapshot = snapshot
        self.context = context
        self.files = _Files(directory, snapshot.parquet)
        self.directory = directory
        self.task_ids = open(directory / "tasks.txt", "w")  # noqa: SIM115
        self.tasks = 0
        self.conversational = _conversational(snapshot)
        self.flags = set(snapshot.filters.get("exclude_flags", []))

    def _task_done(self, task_id: int) -> None:
        self.task_ids.write(f"{task_id}\n")
        self.tasks += 1

    def run(self) -> None:
        kind = self.snapshot.kind
        if kind in (DatasetSnapshot.Kind.PREFERENCE_PAIRS, DatasetSnapshot.Kind.RANKINGS):
            self._rankings()
        elif kind == DatasetSnapshot.Kind.SFT:
            self._demonstrations()
        else:
            self._prompts()
        self.task_ids.close()

    def _progress(self, done: int, total: int) -> None:
        self.context.progress(done, total)

    def _rankings(self) -> None:
        snapshot = self.snapshot
        annotations = _rank_annotations(snapshot)
        total = annotations.values("task_id").distinct().count()
        done = 0
        for batch in _batches(_ranked(annotations), TASK_BATCH):
            prompts, responses, agreements = _task_context([t for t, _ in batch])
            for task_id, annotations in batch:
                self._ranking_rows(task_id, annotations, prompts[task_id],
                                   responses.get(task_id, []), agreements.get(task_id))
            done += len(batch)
            self._progress(done, max(total, done))

    def _ranking_rows(self, task_id, annotations, prompt_fields, responses, agreement) -> None:
        prompt_id, text, messages, category, split = prompt_fields
        prompt = _prompt_of(text, messages)
        dropped = set()
        if self.flags:  # responses anyone flagged with an excluded flag leave the task
            for _, ranking in annotations:
                dropped |= {e["completion"] for e in ranking
                            if self.flags & set(e.get("flags") or ())}
        texts = {cid: body for cid, body in responses if cid not in dropped}
        rankings, ratings, flags = {}, {}, {}
        # Ratings feed margins and the rankings format; flags only the rankings format.
        keep_ratings = self.snapshot.margin or self.snapshot.kind == DatasetSnapshot.Kind.RANKINGS
        keep_flags = self.snapshot.kind == DatasetSnapshot.Kind.RANKINGS
        for annotator, ranking in annotations:
            entries = [e for e in ranking if e["completion"] in texts]
            ranks = ranks_of(entries)
            if len(set(ranks.values())) < 2:
                continue  # nothing to learn from a ranking that ties everything left
            rankings[annotator] = ranks
            if keep_ratings:
                ratings[annotator] = {e["completion"]: e.get("rating") for e in entries}
            if keep_flags:
                flags[annotator] = {e["completion"]: list(e.get("flags") or ())
                                    for e in entries}
        if not rankings:
            return
        snapshot = self.snapshot
        extra = {"task_id": task_id, "prompt_id": prompt_id, "category": category,
                 "agreement": agreement}
        if snapshot.kind == DatasetSnapshot.Kind.PREFERENCE_PAIRS:
            pairs = formats.task_pairs(rankings, merge=snapshot.merge,
                                       policy=snapshot.pair_policy, ratings=ratings,
                                       margin=snapshot.margin)
            # Every row carries a margin or none does (TRL refuses nulls there).
            rows = formats.preference_rows(prompt, (
                (texts[pair.chosen], texts[pair.rejected],
                 (pair.margin or 0.0) if snapshot.margin else None,
                 {"annotator_id": annotator}) for annotator, pair in pairs),
                conversational=self.conversational, extra=extra)
            self.files.write_rows(split, category, rows)
        else:
            row = formats.rankings_row(
                task_id=task_id, prompt=prompt,
                responses=[(cid, body) for cid, body in texts.items()],
                annotators=[{"annotator": a, "ranks": rankings[a], "ratings": ratings[a],
                             "flags": flags[a]} for a in sorted(rankings)],
                consensus=formats.consensus_ranking(rankings), agreement=agreement,
                conversational=self.conversational,
                extra={"prompt_id": prompt_id, "category": category})
            self.files.write(split, category, row)
        self._task_done(task_id)

    def _demonstrations(self) -> None:
        snapshot, filters = self.snapshot, self.snapshot.filters
        # The one rule for training data: rejected demonstrations never reach it.
        demos = demonstrations_for_training(project=snapshot.project).filter(
            _annotator_filter(snapshot, filters), _prompt_filter(filters, "task__prompt__"))
        if filters.get("accepted_only"):
            demos = demos.filter(review_status=ReviewStatus.ACCEPTED)
        total = demos.count()
        rows = _stream(demos.order_by("id"), [
            "id", "task_id", "annotator_id", "demonstration__text", "task__prompt_id",
            "task__prompt__text", "task__prompt__messages", "task__prompt__category",
            "task__prompt__split"])
        for done, (annotation_id, task_id, annotator, response, prompt_id, text, messages,
                   category, split) in enumerate(rows, start=1):
            row = formats.sft_row(
                _prompt_of(text, messages), response, conversational=self.conversational,
                extra={"annotation_id": annotation_id, "task_id": task_id,
                       "prompt_id": prompt_id, "annotator_id": annotator,
                       "category": category})
            self.files.write(split, category, row)
            self._task_done(task_id)
            if done % FETCH == 0:
                self._progress(done, total)
        self._progress(total, total)

    def _prompts(self) -> None:
        snapshot = self.snapshot
        prompts = Prompt.objects.filter(_prompt_filter(snapshot.filters, ""),
                                        project=snapshot.project)
        total = prompts.count()
        rows = _stream(prompts.order_by("id"), ["id", "text", "messages", "category", "split"])
        for done, (prompt_id, text, messages, category, split) in enumerate(rows, start=1):
            row = formats.prompt_row(prompt_id=prompt_id, prompt=_prompt_of(text, messages),
                                     category=category, split=split,
                                     conversational=self.conversational)
            self.files.write(split, category, row)
            if done % FETCH == 0:
                self._progress(done, total)
        self._progress(total, total)


def _changes(snapshot: DatasetSnapshot, previous: DatasetSnapshot | None,
             directory: Path) -> dict:
    """Return what changed since the previous snapshot: rows per split, tasks in and out."""
    if previous is None:
        return {}
    rows = {split: snapshot.row_counts.get(split, 0) - previous.row_counts.get(split, 0)
            for split in sorted(set(snapshot.row_counts) | set(previous.row_counts))}
    added = removed = 0
    old_file = Path(previous.directory) / "tasks.txt"
    if old_file.exists():
        # Both lists are sorted ascending only for some kinds; sets of ids are small
        # (8 bytes each) next to the rows themselves.
        old = {int(line) for line in old_file.open()}
        new = {int(line) for line in (directory / "tasks.txt").open()}
        added, removed = len(new - old), len(old - new)
    return {"previous": previous.pk, "rows": rows, "tasks_added": added,
            "tasks_removed": removed, "same_content": snapshot.content_hash
            == previous.content_hash,
            "filters_changed": snapshot.filters != previous.filters}


@job_handler(Job.Kind.SNAPSHOT)
def snapshot_build(context: JobContext) -> None:
    """Build a snapshot's files and record its counts and hash (the job's handler)."""
    snapshot = DatasetSnapshot.objects.select_related("project").get(job=context.job)
    root = snapshot_root()
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{snapshot.pk}.tmp-*"):  # left by a worker that died
        shutil.rmtree(stale, ignore_errors=True)
    final = root / str(snapshot.pk)
    work = root / f".{snapshot.pk}.tmp-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        builder = _Builder(snapshot, context, work)
        builder.run()
        snapshot.files = builder.files.close()
        snapshot.row_counts = dict(sorted(builder.files.hash.rows.items()))
        snapshot.category_counts = {s: dict(sorted(c.items()))
                                    for s, c in sorted(builder.files.categories.items())}
        snapshot.tasks = builder.tasks
        snapshot.content_hash = builder.files.hash.hexdigest()
        previous = (DatasetSnapshot.objects.filter(
            project=snapshot.project, kind=snapshot.kind, pk__lt=snapshot.pk)
            .exclude(content_hash="").order_by("-pk").first())
        snapshot.previous = previous
        snapshot.changes = _changes(snapshot, previous, work)
        pairs = snapshot.kind == DatasetSnapshot.Kind.PREFERENCE_PAIRS
        heads = {split: _Head(n, builder.files.first[split])
                 for split, n in snapshot.row_counts.items()}
        (work / "README.md").write_text(dataset_card(
            name=snapshot.name, kind=snapshot.kind, splits=heads,
            counts_by_category=snapshot.category_counts, filters=snapshot.filters,
            # Merge and pair policies shape preference pairs only.
            merge=snapshot.merge if pairs else None,
            pair_policy=snapshot.pair_policy if pairs else None,
            agreement=_agreement_summary(snapshot), license=snapshot.license,
            content_hash=snapshot.content_hash, created_at=snapshot.created_at.isoformat(),
            files={split: names["jsonl"] for split, names in snapshot.files.items()},
        ), encoding="utf-8")
        if final.exists():  # an earlier attempt finished its rename but not its record
            shutil.rmtree(final)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    snapshot.directory = str(final)
    with context.fenced():
        snapshot.save(update_fields=["files", "row_counts", "category_counts", "tasks",
                                     "content_hash", "previous", "changes", "directory"])


class _Head(Sequence):
    """A split as the dataset card reads it: its length and first row, not every row."""

    def __init__(self, length: int, first: dict):
        self.length, self.first_row = length, first

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        if index != 0:
            raise IndexError("only the first row is kept")
        return self.first_row


def _agreement_summary(snapshot: DatasetSnapshot) -> dict | None:
    stored = getattr(snapshot.project, "agreement", None)
    if stored is None or stored.agreement is None:
        return None
    return {"pairwise_agreement": round(stored.agreement, 4),
            "interval": [round(stored.interval_low, 4), round(stored.interval_high, 4)]
            if stored.interval_low is not None else None,
            "tasks": stored.tasks}


def snapshot_file(*, snapshot: DatasetSnapshot, split: str, fmt: str = "jsonl") -> Path:
    """Return the path of one of a built snapshot's files ("card" for its README.md)."""
    if not snapshot.is_built:
        raise SnapshotError("the snapshot is not built yet")
    directory = Path(snapshot.directory)
    if split == "card":
        return directory / "README.md"
    name = (snapshot.files.get(split) or {}).get(fmt)
    if name is None:
        raise SnapshotError(f"the snapshot has no {fmt} file for the {split!r} split")
    return directory / name
