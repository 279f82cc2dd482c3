"""Prompt import: validate every line, report line numbers, import all or nothing.

A file is read line by line (a 200 MB upload never sits in memory) inside one
transaction; the first bad line stops the writing, the rest of the file is still
validated so that the report lists every problem, and then everything is rolled back
(unless the caller asked to skip bad lines).
"""

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.db.models import Count

from labeling import text as textutil
from labeling.models import Category, Completion, Prompt, Task, TaskCompletion

MAX_REPORTED_ERRORS = 1000
MAX_PROMPT_CHARS = 100_000
MIN_COMPLETIONS, MAX_COMPLETIONS = 2, 9
ALLOWED_FIELDS = {"prompt", "messages", "category", "user_id", "metadata", "completions"}
ROLES = {"system", "user", "assistant"}


class ImportRejected(Exception):
    """Raised inside the import transaction to roll it back; carries the report."""

    def __init__(self, report):
        super().__init__("import rejected")
        self.report = report


@dataclass
class ImportReport:
    added: int = 0
    duplicates: int = 0
    capped: int = 0
    tasks_created: int = 0
    lines: int = 0
    bad_lines: int = 0
    errors: list[dict] = field(default_factory=list)
    imported: bool = True

    def error(self, line: int, message: str) -> None:
        self.bad_lines += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"line": line, "message": message})

    def as_dict(self) -> dict:
        return {
            "added": self.added,
            "duplicates": self.duplicates,
            "capped": self.capped,
            "tasks_created": self.tasks_created,
            "lines": self.lines,
            "bad_lines": self.bad_lines,
            "imported": self.imported,
            "errors": self.errors,
        }


class LineError(ValueError):
    pass


@dataclass
class _Item:
    line: int
    text: str
    messages: list | None
    category: str
    user_id: str
    metadata: dict
    completions: list[dict]
    content_hash: str
    prefix_hash: str


# --- reading -------------------------------------------------------------------------


def _decoded_lines(stream) -> Iterator[tuple[int, str | None, str | None]]:
    """Yield (line number, text, error) for each line of a binary stream."""
    for number, raw in enumerate(stream, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            yield number, None, (
                f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                "save the file as UTF-8"
            )


def _jsonl_records(stream) -> Iterator[tuple[int, dict | None, str | None]]:
    for number, line, error in _decoded_lines(stream):
        if error:
            yield number, None, error
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"not valid JSON: {exc.msg} (column {exc.colno})"
            continue
        if not isinstance(record, dict):
            yield number, None, "each line must be a JSON object"
            continue
        yield number, record, None


_CSV_COMPLETION_COLUMNS = {f"completion_{i}" for i in range(1, MAX_COMPLETIONS + 1)}
_CSV_MODEL_COLUMNS = {f"model_{i}" for i in range(1, MAX_COMPLETIONS + 1)}


def _csv_records(stream) -> Iterator[tuple[int, dict | None, str | None]]:
    decode_errors: list[tuple[int, str]] = []

    def good_lines():
        for number, line, error in _decoded_lines(stream):
            if error:
                decode_errors.append((number, error))
                yield "\n"  # keep physical line numbers aligned
            else:
                yield line

    reader = csv.reader(good_lines())
    header = None
    for row in reader:
        number = reader.line_num
        while decode_errors:
            bad_number, message = decode_errors.pop(0)
            yield bad_number, None, message
        if header is None:
            header = [column.strip().lower() for column in row]
            allowed = ALLOWED_FIELDS | _CSV_COMPLETION_COLUMNS | _CSV_MODEL_COLUMNS
            unknown = [c for c in header if c not in allowed]
            if unknown:
                yield number, None, (
                    f"unknown column(s) {', '.join(unknown)}; allowed: "
                    f"{', '.join(sorted(ALLOWED_FIELDS))}, completion_N, model_N"
                )
                return
            if "prompt" not in header and "messages" not in header:
                yield number, None, "the header needs a 'prompt' or 'messages' column"
                return
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield number, None, f"expected {len(header)} columns, found {len(row)}"
            continue
        cells = {name: value for name, value in zip(header, row, strict=True) if value != ""}
        record: dict = {}
        try:
            for name in ("messages", "metadata", "completions"):
                if name in cells:
                    try:
                        record[name] = json.loads(cells.pop(name))
                    except json.JSONDecodeError as exc:
                        raise LineError(f"column '{name}' is not valid JSON: {exc.msg}") from exc
        except LineError as exc:
            yield number, None, str(exc)
            continue
        numbered = []
        for i in range(1, MAX_COMPLETIONS + 1):
            text = cells.pop(f"completion_{i}", None)
            model = cells.pop(f"model_{i}", "")
            if text is not None:
                numbered.append({"text": text, "model": model})
        if numbered:
            record["completions"] = record.get("completions", []) + numbered
        record.update(cells)
        yield number, record, None
    for bad_number, message in decode_errors:
        yield bad_number, None, message
    if header is None and not decode_errors:
        yield 1, None, "the file is empty"


def records_from_file(stream, file_name: str = "") -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield (line, record, error) from a JSONL or CSV binary stream."""
    name = file_name.lower()
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return _jsonl_records(stream)
    if name.endswith((".csv", ".tsv")):
        return _csv_records(stream)
    peek = stream.read(1)
    while peek in (b" ", b"\n", b"\r", b"\t", b"\xef", b"\xbb", b"\xbf"):
        peek = stream.read(1)
    stream.seek(0)
    return _jsonl_records(stream) if peek in (b"{", b"[") else _csv_records(stream)


def records_from_items(items: Iterable) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield (item number, record, error) from a JSON list of objects (1-based)."""
    for number, item in enumerate(items, start=1):
        if isinstance(item, dict):
            yield number, item, None
        else:
            yield number, None, "each item must be a JSON object"


# --- validation ----------------------------------------------------------------------

_CATEGORY_ALIASES = {label.lower(): value for value, label in Category.choices}
_CATEGORY_ALIASES.update({value.replace("_", " "): value for value in Category.values})
_CATEGORY_ALIASES.update({"qa": Category.OPEN_QA, "open qa": Category.OPEN_QA})


def _category(value) -> str:
    if value is None or value == "":
        return Category.OTHER
    if not isinstance(value, str):
        raise LineError("'category' must be a string")
    key = value.strip().lower().replace("-", " ")
    if key.replace(" ", "_") in Category.values:
        return key.replace(" ", "_")
    if key in _CATEGORY_ALIASES:
        return _CATEGORY_ALIASES[key]
    raise LineError(f"unknown category '{value}'; use one of {', '.join(Category.values)}")


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise LineError("'messages' must be a non-empty list of {role, content} objects")
    cleaned = []
    for i, message in enumerate(value, start=1):
        if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
            raise LineError(f"message {i} must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise LineError(f"message {i} has role {role!r}; use system, user or assistant")
        if not isinstance(content, str) or not content.strip():
            raise LineError(f"message {i} has no text in 'content'")
        cleaned.append({"role": role, "content": content})
    if cleaned[-1]["role"] != "user":
        raise LineError("the last message of a chat prompt must come from the user")
    return cleaned


def _completions(value) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise LineError("'completions' must be a list of {text, model} objects")
    if not MIN_COMPLETIONS <= len(value) <= MAX_COMPLETIONS:
        raise LineError(
            f"a ranking task needs {MIN_COMPLETIONS} to {MAX_COMPLETIONS} completions, "
            f"found {len(value)}"
        )
    cleaned, seen = [], set()
    for i, completion in enumerate(value, start=1):
        if isinstance(completion, str):
            completion = {"text": completion}
        if not isinstance(completion, dict) or set(completion) - {"text", "model"}:
            raise LineError(f"completion {i} must be an object with 'text' and 'model'")
        text, model = completion.get("text"), completion.get("model", "")
        if not isinstance(text, str) or not text.strip():
            raise LineError(f"completion {i} has no 'text'")
        if not isinstance(model, str):
            raise LineError(f"completion {i}: 'model' must be a string")
        key = textutil.normalize(text)
        if key in seen:
            raise LineError(f"completion {i} repeats an earlier completion")
        seen.add(key)
        cleaned.append({"text": text, "model": model.strip()})
    return cleaned


def validate_record(record: dict, *, line: int, prefix_chars: int) -> _Item:
    """Return a clean item from one raw record, or raise LineError saying what is wrong."""
    unknown = sorted(set(record) - ALLOWED_FIELDS)
    if unknown:
        raise LineError(
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(ALLOWED_FIELDS))}"
        )
    has_prompt, has_messages = record.get("prompt") is not None, "messages" in record
    if has_prompt == has_messages:
        raise LineError("give exactly one of 'prompt' (text) or 'messages' (a chat)")
    messages = None
    text = ""
    if has_prompt:
        text = record["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise LineError("'prompt' must be non-empty text")
    else:
        messages = _messages(record["messages"])
    plain = textutil.prompt_plain_text(text, messages)
    if len(plain) > MAX_PROMPT_CHARS:
        raise LineError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
    user_id = record.get("user_id", "")
    if user_id is None:
        user_id = ""
    if isinstance(user_id, bool) or not isinstance(user_id, str | int):
        raise LineError("'user_id' must be a string or a number")
    user_id = str(user_id).strip()
    if len(user_id) > 200:
        raise LineError("'user_id' is longer than 200 characters")
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise LineError("'metadata' must be a JSON object")
    normalized = textutil.normalize(plain)
    return _Item(
        line=line,
        text=text,
        messages=messages,
        category=_category(record.get("category")),
        user_id=user_id,
        metadata=metadata,
        completions=_completions(record.get("completions")),
        content_hash=textutil.content_hash(normalized),
        prefix_hash=textutil.prefix_hash(normalized, prefix_chars),
    )


# --- writing -------------------------------------------------------------------------


class _Writer:
    """Deduplicate, cap and insert validated items in batches."""

    def __init__(self, *, project, report, source, author, create_demonstrate_tasks):
        self.project = project
        self.report = report
        self.source = source
        self.author = author
        self.create_demonstrate_tasks = create_demonstrate_tasks
        self.seen_hashes: set[bytes] = set()
        self.seen_prefixes: set[bytes] = set()
        self.user_counts: dict[str, int] = {}
        self.batch: list[_Item] = []
        self.batch_size = settings.LAOSHI_IMPORT_BATCH_SIZE

    def add(self, item: _Item) -> None:
        self.batch.append(item)
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        project = self.project
        hashes = {item.content_hash for item in batch}
        prefixes = {item.prefix_hash for item in batch if item.prefix_hash}
        existing = set(
            Prompt.objects.filter(project=project, content_hash__in=hashes).values_list(
                "content_hash", flat=True
            )
        )
        existing_prefixes = set(
            Prompt.objects.filter(project=project, prefix_hash__in=prefixes).values_list(
                "prefix_hash", flat=True
            )
        ) if prefixes else set()
        new_users = {i.user_id for i in batch if i.user_id and i.user_id not in self.user_counts}
        if new_users:
            self.user_counts.update({user: 0 for user in new_users})
            rows = (
                Prompt.objects.filter(project=project, external_user_id__in=new_users)
                .values("external_user_id")
                .annotate(n=Count("id"))
            )
            for row in rows:
                self.user_counts[row["external_user_id"]] = row["n"]

        keep: list[_Item] = []
        for item in batch:
            digest = bytes.fromhex(item.content_hash)[:16]
            prefix = bytes.fromhex(item.prefix_hash)[:16] if item.prefix_hash else None
            prefix_seen = prefix is not None and (
                item.prefix_hash in existing_prefixes or prefix in self.seen_prefixes
            )
            if item.content_hash in existing or digest in self.seen_hashes or prefix_seen:
                self.report.duplicates += 1
                continue
            if item.user_id and self.user_counts[item.user_id] >= project.per_user_cap:
                self.report.capped += 1
                continue
            self.seen_hashes.add(digest)
            if prefix:
                self.seen_prefixes.add(prefix)
            if item.user_id:
                self.user_counts[item.user_id] += 1
            keep.append(item)
        if keep:
            self._insert(keep)

    def _insert(self, items: list[_Item]) -> None:
        project = self.project
        prompts = Prompt.objects.bulk_create(
            [
                prompt_build(project=project, item=item, source=self.source, author=self.author)
                for item in items
            ]
        )
        self.report.added += len(prompts)
        completions, tasks, task_items = [], [], []
        for prompt, item in zip(prompts, items, strict=True):
            if item.completions:
                kind = Task.Kind.RANK
                completions.append(
                    [
                        Completion(
                            prompt=prompt,
                            text=c["text"],
                            source=Completion.Source.IMPORTED,
                            generator=c["model"],
                        )
                        for c in item.completions
                    ]
                )
            elif self.create_demonstrate_tasks:
                kind = Task.Kind.DEMONSTRATE
                completions.append([])
            else:
                continue
            tasks.append(task_build(project=project, kind=kind, prompt=prompt))
            task_items.append(item)
        Completion.objects.bulk_create([c for group in completions for c in group])
        tasks = Task.objects.bulk_create(tasks)
        links = [
            TaskCompletion(task=task, completion=completion, position=position)
            for task, group in zip(tasks, [g for g in completions], strict=True)
            for position, completion in enumerate(group)
        ]
        TaskCompletion.objects.bulk_create(links)
        self.report.tasks_created += len(tasks)


def prompt_build(*, project, item: _Item, source: str, author=None, author_id=None,
                 style: str = Prompt.Style.PLAIN) -> Prompt:
    """Return an unsaved prompt for a validated item, its split taken from the user id."""
    return Prompt(
        project=project,
        text=item.text,
        messages=item.messages,
        category=item.category,
        source=source,
        style=style,
        external_user_id=item.user_id,
        split=textutil.split_for(
            item.user_id or item.content_hash, project.split_train, project.split_valid
        ),
        content_hash=item.content_hash,
        prefix_hash=item.prefix_hash,
        metadata=item.metadata,
        author_id=author.pk if author is not None else author_id,
    )


def task_build(*, project, kind, prompt=None, priority=0) -> Task:
    """Return an unsaved task with its overlap (higher when in the agreement sample)."""
    required = project.overlap
    sample_key = prompt.content_hash if prompt is not None else ""
    if kind == Task.Kind.RANK and textutil.in_sample(sample_key, project.agreement_sample_rate):
        required = max(project.overlap, project.agreement_overlap)
    if kind == Task.Kind.WRITE_PROMPT:
        required = 1
    return Task(
        project=project,
        kind=kind,
        prompt=prompt,
        prompt_author_id=prompt.author_id if prompt is not None else None,
        required_annotations=required,
        priority=priority,
    )


def prompts_import(
    *,
    project,
    records: Iterable[tuple[int, dict | None, str | None]],
    skip_bad_lines: bool = False,
    create_demonstrate_tasks: bool = True,
    source: str = Prompt.Source.IMPORTED,
    author=None,
) -> ImportReport:
    """Import prompts from (line, record, error) triples; all or nothing by default.

    Return the report. When a line is bad and ``skip_bad_lines`` is off, nothing is
    written and ``report.imported`` is False.
    """
    report = ImportReport()
    try:
        with transaction.atomic():
            writer = _Writer(
                project=project,
                report=report,
                source=source,
                author=author,
                create_demonstrate_tasks=create_demonstrate_tasks,
            )
            for line, record, error in records:
                report.lines += 1
                if error is None:
                    try:
                        item = validate_record(
                            record, line=line, prefix_chars=project.dedup_prefix_chars
                        )
                    except LineError as exc:
                        error = str(exc)
                if error is not None:
                    report.error(line, error)
                    continue
                if report.bad_lines and not skip_bad_lines:
                    continue  # keep validating to report every bad line; write nothing
                writer.add(item)
            if report.bad_lines and not skip_bad_lines:
                raise ImportRejected(report)
            writer.flush()
    except ImportRejected:
        report.imported = False
        report.added = report.duplicates = report.capped = report.tasks_created = 0
    return report


def prompts_import_file(*, project, file, file_name="", **options) -> ImportReport:
    """Import a JSONL or CSV file opened in binary mode."""
    if isinstance(file, io.TextIOBase):
        raise TypeError("open the file in binary mode")
    return prompts_import(project=project, records=records_from_file(file, file_name), **options)


def prompt_import_start(*, project, uploaded_file, user, skip_bad_lines=False,
                        create_demonstrate_tasks=True):
    """Store an uploaded file and queue its import on a worker; return the PromptImport."""
    from labeling.models import PromptImport
    from labeling.tasks import prompt_import_task

    with transaction.atomic():
        prompt_import = PromptImport.objects.create(
            project=project,
            file=uploaded_file,
            file_name=uploaded_file.name[:255],
            skip_bad_lines=skip_bad_lines,
            create_demonstrate_tasks=create_demonstrate_tasks,
            created_by=user,
        )
        prompt_import_task.delay_on_commit(prompt_import.pk)
    return prompt_import


def prompt_import_run(*, prompt_import_id: int) -> None:
    """Run a queued browser import once.

    The row is locked and the import written in one transaction: a worker killed half
    way leaves the import pending with nothing written, so the redelivered message runs
    it again; a duplicated message finds the row locked or done and does nothing.
    """
    from django.utils import timezone

    from labeling.models import PromptImport

    try:
        with transaction.atomic():
            prompt_import = (
                PromptImport.objects.select_for_update(skip_locked=True)
                .select_related("project")
                .filter(pk=prompt_import_id, status=PromptImport.Status.PENDING)
                .first()
            )
            if prompt_import is None:
                return
            with prompt_import.file.open("rb") as handle:
                report = prompts_import_file(
                    project=prompt_import.project,
                    file=handle,
                    file_name=prompt_import.file_name,
                    skip_bad_lines=prompt_import.skip_bad_lines,
                    create_demonstrate_tasks=prompt_import.create_demonstrate_tasks,
                    author=None,
                )
            prompt_import.status = (
                PromptImport.Status.DONE if report.imported else PromptImport.Status.REJECTED
            )
            prompt_import.report = report.as_dict()
            prompt_import.finished_at = timezone.now()
            prompt_import.save(update_fields=["status", "report", "finished_at"])
    except Exception as exc:
        PromptImport.objects.filter(pk=prompt_import_id).update(
            status=PromptImport.Status.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
        raise
