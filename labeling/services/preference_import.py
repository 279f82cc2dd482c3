"""Preference import: TRL pairs and OpenAssistant trees become ranked, annotated tasks.

For teams arriving from other tools. Two formats, one JSON object a line:

- ``trl``: ``{"prompt", "chosen", "rejected"}`` with optional ``"margin"`` and ``"id"``
  (text, or chats as TRL's conversational form), or the implicit form without
  ``"prompt"`` where ``chosen`` and ``rejected`` are whole conversations that differ
  only in their last assistant message.
- ``oasst``: OpenAssistant message trees (the oasst1/oasst2 ``trees`` export). Every
  prompter message with two or more ranked assistant replies is one preference: its
  conversation from the root is the prompt (a chat), its ranked replies are ranked
  ``rank + 1`` (made dense, so 0, 2 gives 1, 2; equal ranks tie).

How preferences become rows: one preference (a TRL line, or an OASST prompter message)
is one rank Annotation that ranks only its own responses (2 for a TRL pair). Preferences
with the same prompt (the prompt import's content hash) share one Prompt and one rank
Task holding all their distinct responses (normalised text; at most 9). An Annotation
may rank a subset of its task's responses: ``agreement.ranks_of``, the agreement
figures and the dataset exports all read a ranking over the completions it holds, so a
``preference_pairs`` export (per annotator, all pairs) gives back exactly the imported
pairs and a ``rankings`` export shows each one as an annotator's ranks. A set of pairs
is not folded into one ranking: that would state pairs the file never did (a > b and
b > c say nothing of a against c) and cannot hold contradictory pairs.

Each Annotation needs its own Assignment, and Assignment is unique per (task,
annotator): the n-th preference of a prompt is recorded by the synthetic user
``imported:<source>:<n>`` (inactive, unusable password, no membership, so they never
claim work and stay out of the annotator table). With an explicit ``annotator``, every
preference is theirs and a second preference for one prompt is a line error. Imported
tasks are complete (required, assigned and submitted all equal their preferences).

Everything is marked: Prompt.source IMPORTED with ``metadata = {"source", "format",
"preferences": [{"line", "annotation", original ids, "margin"}]}``; Completion.source
IMPORTED, generator ``imported:<source>``, ``generation_params`` with the source and
original ids. An imported preference has no display order, so its position_rho stays
empty rather than measuring an order nobody saw.

The rules are the prompt import's: every line is validated and reported with its number,
one bad line writes nothing (unless ``skip_bad_lines``), and the file is streamed and
written in batches in one transaction. Only a few hashes per distinct prompt stay in
memory, to merge prompts across batches. A preference whose prompt was already in the
project before this import is counted as a duplicate and left out (so running an import
twice adds nothing), as is a preference repeated in the file. The project's prefix
deduplication and per-user cap are for collecting new prompts and do not apply here.
TRL margins are kept in the prompt's metadata: exports derive margins from ratings.
"""

import io
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from labeling import text as textutil
from labeling.agreement import ranking_summary
from labeling.models import (
    Annotation,
    Assignment,
    Category,
    Completion,
    Prompt,
    Task,
    TaskCompletion,
)
from labeling.services.importing import (
    MAX_COMPLETIONS,
    ImportRejected,
    ImportReport,
    LineError,
    prompt_build,
    records_from_file,
    task_build,
    validate_record,
)

FORMATS = ("trl", "oasst")
MAX_RESPONSE_CHARS = 100_000
MAX_ID_CHARS = 200
_SOURCE = re.compile(r"[\w.@+/-]{1,100}")


@dataclass
class PreferenceImportReport(ImportReport):
    """The prompt import's report, plus what a preference import writes.

    ``added`` counts prompts; ``duplicates`` counts preferences left out (repeated in
    the file, or for a prompt the project had before); ``no_preferences`` counts OASST
    trees without a prompter message with two ranked replies.
    """

    completions: int = 0
    preferences: int = 0
    no_preferences: int = 0

    def as_dict(self) -> dict:
        return super().as_dict() | {
            "completions": self.completions,
            "preferences": self.preferences,
            "no_preferences": self.no_preferences,
        }


class _Response(NamedTuple):
    text: str
    key: int  # 64 bits of the normalised text's hash: the response's identity in a prompt
    rank: int
    params: dict  # original ids, for Completion.generation_params


@dataclass(slots=True)
class _Unit:
    """One preference: a prompt and its responses with ranks (1 = best)."""

    line: int
    item: Any  # importing._Item, the validated prompt
    responses: list[_Response]
    meta: dict  # original ids, for the prompt's metadata
    split_key: str = ""
    state: "_PromptState | None" = None

    @property
    def prompt_key(self) -> bytes:
        return bytes.fromhex(self.item.content_hash)[:16]

    @property
    def key(self) -> int:
        return hash(tuple(sorted((r.key, r.rank) for r in self.responses)))


class _PromptState:
    """What the import knows of one distinct prompt of the file (kept small: one a prompt)."""

    __slots__ = ("first_line", "responses", "units", "prompt_id", "task_id", "completion_ids",
                 "written", "existing")

    def __init__(self, first_line: int):
        self.first_line = first_line
        self.responses: list[int] = []  # response keys, in task position order
        self.units: list[int] = []  # preference keys accepted so far
        self.prompt_id: int | None = None
        self.task_id: int | None = None
        self.completion_ids: list = []  # aligned with responses, as far as written
        self.written = 0  # annotations written: the next preference is number written + 1
        self.existing = False  # the project had this prompt before the import


def _response_key(text: str) -> int:
    return int(textutil.content_hash(textutil.normalize(text))[:16], 16)


def _response_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LineError(f"{name} has no text")
    if len(value) > MAX_RESPONSE_CHARS:
        raise LineError(f"{name} is longer than {MAX_RESPONSE_CHARS} characters")
    return value


def _pairs(messages: list) -> list[tuple]:
    return [(m.get("role"), m.get("content")) if isinstance(m, dict) else (None, m)
            for m in messages]


def _original_id(value: Any, name: str) -> str | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise LineError(f"'{name}' must be a string or a number")
    if isinstance(value, str) and len(value) > MAX_ID_CHARS:
        raise LineError(f"'{name}' is longer than {MAX_ID_CHARS} characters")
    return value


# --- TRL -------------------------------------------------------------------------------


def _trl_response(value: Any, name: str, prompt: list) -> str:
    """Return the response text of 'chosen' or 'rejected' given with an explicit prompt."""
    if isinstance(value, str):
        return _response_text(value, f"'{name}'")
    if not isinstance(value, list) or not value:
        raise LineError(f"'{name}' must be text or a list of messages")
    last = value[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise LineError(f"'{name}' must end with one assistant message")
    # Some datasets repeat the prompt in chosen/rejected: accept it when it is exact.
    if len(value) > 1 and _pairs(value[:-1]) != _pairs(prompt):
        raise LineError(
            f"'{name}' must be the assistant's response: the messages before its last one "
            "must repeat the prompt exactly"
        )
    return _response_text(last.get("content"), f"the last message of '{name}'")


def _trl_implicit(chosen: Any, rejected: Any) -> tuple[list, str, str]:
    """Split conversations sharing a prefix into (prompt messages, chosen, rejected)."""
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise LineError(
            "without 'prompt', 'chosen' and 'rejected' must be conversations (lists of "
            "messages) that share the prompt; for text, give 'prompt' separately"
        )
    a, b = _pairs(chosen), _pairs(rejected)
    if a == b:
        raise LineError("'chosen' and 'rejected' are the same conversation")
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    ends_in_one_answer = (
        shared >= 1
        and len(a) == len(b) == shared + 1
        and a[-1][0] == b[-1][0] == "assistant"
        and a[shared - 1][0] == "user"
    )
    if not ends_in_one_answer:
        raise LineError(
            "without 'prompt', 'chosen' and 'rejected' must be the same conversation up to "
            "a user message, each followed by one assistant message; give 'prompt' "
            "separately for other shapes"
        )
    return (
        chosen[:shared],
        _response_text(a[-1][1], "the last message of 'chosen'"),
        _response_text(b[-1][1], "the last message of 'rejected'"),
    )


def trl_preferences(record: dict, *, line: int, prefix_chars: int) -> list[_Unit]:
    """Return the one preference of a TRL line, or raise LineError saying what is wrong."""
    for name in ("chosen", "rejected"):
        if record.get(name) is None:
            raise LineError(f"missing '{name}'")
    prompt = record.get("prompt")
    if prompt is None:
        messages, chosen, rejected = _trl_implicit(record["chosen"], record["rejected"])
        prompt_record = {"messages": messages, "category": Category.CHAT}
    elif isinstance(prompt, str):
        prompt_record = {"prompt": prompt}
    elif isinstance(prompt, list):
        prompt_record = {"messages": prompt, "category": Category.CHAT}
    else:
        raise LineError("'prompt' must be text or a list of messages")
    item = validate_record(prompt_record, line=line, prefix_chars=prefix_chars)
    if prompt is not None:
        conversation = prompt if isinstance(prompt, list) else [
            {"role": "user", "content": prompt}]
        chosen = _trl_response(record["chosen"], "chosen", conversation)
        rejected = _trl_response(record["rejected"], "rejected", conversation)
    if textutil.normalize(chosen) == textutil.normalize(rejected):
        raise LineError("'chosen' and 'rejected' are the same response")
    margin = record.get("margin")
    if margin is not None and (
        isinstance(margin, bool) or not isinstance(margin, int | float)
        or not math.isfinite(margin)
    ):
        raise LineError("'margin' must be a number")
    original_id = _original_id(record.get("id"), "id")
    ids = {"line": line} | ({"id": original_id} if original_id is not None else {})
    meta = ids | ({"margin": margin} if margin is not None else {})
    return [_Unit(
        line=line,
        item=item,
        responses=[
            _Response(chosen, _response_key(chosen), 1, ids),
            _Response(rejected, _response_key(rejected), 2, ids),
        ],
        meta=meta,
    )]


# --- OpenAssistant ---------------------------------------------------------------------

_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def _oasst_message(message: Any, where: str) -> tuple[str, str, list]:
    """Return (label for messages, role, replies) of a tree node, checking its shape."""
    if not isinstance(message, dict):
        raise LineError(f"{where} must be a message object")
    message_id = message.get("message_id")
    if message_id is not None and not isinstance(message_id, str):
        raise LineError(f"{where}: 'message_id' must be a string")
    label = f"message {message_id}" if message_id else where
    role = message.get("role")
    if role not in _OASST_ROLES:
        raise LineError(f"{label} has role {role!r}; use prompter or assistant")
    replies = message.get("replies")
    if replies is None:
        replies = []
    if not isinstance(replies, list):
        raise LineError(f"{label}: 'replies' must be a list of messages")
    rank = message.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        raise LineError(f"{label}: 'rank' must be a whole number from 0 (best)")
    return label, role, replies


def oasst_preferences(record: dict, *, line: int, prefix_chars: int) -> list[_Unit]:
    """Return the preferences of one OpenAssistant message tree (walked depth first)."""
    root = record.get("prompt")
    if not isinstance(root, dict):
        raise LineError("'prompt' must be the tree's first message (an object)")
    tree_id = record.get("message_tree_id")
    if tree_id is not None and not isinstance(tree_id, str):
        raise LineError("'message_tree_id' must be a string")
    if root.get("role") != "prompter":
        raise LineError("the tree's first message must come from the prompter")
    starter = root.get("user_id")
    starter = starter if isinstance(starter, str) else ""
    tree_ids = {"message_tree_id": tree_id} if tree_id else {}
    units: list[_Unit] = []
    # An explicit stack: a tree's depth is the data's to choose, not Python's limit.
    stack: list[tuple[dict, list, str]] = [(root, [], "prompt")]
    while stack:
        message, history, where = stack.pop()
        label, role, replies = _oasst_message(message, where)
        if message.get("deleted") is True:
            continue
        text = _response_text(message.get("text"), label)
        conversation = history + [{"role": _OASST_ROLES[role], "content": text}]
        expected = "assistant" if role == "prompter" else "prompter"
        children = []
        for i, reply in enumerate(replies):
            child_where = f"{where}.replies[{i}]"
            child_label, child_role, _ = _oasst_message(reply, child_where)
            if child_role != expected:
                raise LineError(f"{child_label}: a reply to a {role} message must come from "
                                f"the {expected}")
            if reply.get("deleted") is not True:
                children.append((reply, conversation, child_where))
        if role == "prompter":
            ranked = [(reply, reply_where) for reply, _, reply_where in children
                      if reply.get("rank") is not None]
            if len(ranked) > MAX_COMPLETIONS:
                raise LineError(f"{label} has {len(ranked)} ranked replies; a rank task holds "
                                f"at most {MAX_COMPLETIONS}")
            if len(ranked) >= 2:
                units.append(_oasst_unit(
                    message, label, conversation, ranked, line=line, prefix_chars=prefix_chars,
                    starter=starter, tree_ids=tree_ids))
        stack.extend(reversed(children))
    return units


def _oasst_unit(message, label, conversation, ranked, *, line, prefix_chars, starter,
                tree_ids) -> _Unit:
    try:
        # The conversation's starter: their trees stay in one split, deeper turns included.
        item = validate_record(
            {"messages": conversation, "category": Category.CHAT, "user_id": starter},
            line=line, prefix_chars=prefix_chars)
    except LineError as exc:
        raise LineError(f"{label}: {exc}") from None
    dense = {rank: i for i, rank in enumerate(sorted({r["rank"] for r, _ in ranked}), start=1)}
    responses, seen = [], {}
    for reply, where in ranked:
        reply_label = f"message {reply['message_id']}" if reply.get("message_id") else where
        text = _response_text(reply.get("text"), reply_label)
        key = _response_key(text)
        if key in seen:
            raise LineError(f"{reply_label} repeats the text of {seen[key]}")
        seen[key] = reply_label
        params = tree_ids | {"line": line}
        if reply.get("message_id"):
            params["message_id"] = reply["message_id"]
        if isinstance(reply.get("model_name"), str):
            params["model_name"] = reply["model_name"]
        responses.append(_Response(text, key, dense[reply["rank"]], params))
    meta = {"line": line} | tree_ids
    if message.get("message_id"):
        meta["message_id"] = message["message_id"]
    return _Unit(line=line, item=item, responses=responses, meta=meta,
                 split_key=starter or tree_ids.get("message_tree_id", ""))


_PARSERS: dict[str, Callable[..., list[_Unit]]] = {
    "trl": trl_preferences,
    "oasst": oasst_preferences,
}


# --- writing ---------------------------------------------------------------------------


class _Writer:
    """Merge preferences by prompt and insert them in batches."""

    def __init__(self, *, project, report: PreferenceImportReport, fmt: str, source: str,
                 annotator):
        self.project = project
        self.report = report
        self.fmt = fmt
        self.source = source
        self.annotator = annotator
        self.states: dict[bytes, _PromptState] = {}
        self.user_ids: dict[int, int] = {}
        self.batch: list[_Unit] = []
        self.batch_size = settings.LAOSHI_IMPORT_BATCH_SIZE

    def plan(self, units: list[_Unit]) -> list[_Unit]:
        """Check a line's preferences against the prompts before it; return the new ones.

        Raise LineError (and remember nothing of the line) when one would put a tenth
        response in a task, or a second preference of one annotator on it.
        """
        staged: dict[bytes, tuple[list[int], list[int], int]] = {}
        fresh: list[_Unit] = []
        repeated = 0
        for unit in units:
            key = unit.prompt_key
            state = self.states.get(key)
            responses, keys, first_line = staged.get(key) or (
                (list(state.responses), list(state.units), state.first_line)
                if state else ([], [], unit.line)
            )
            if unit.key in keys:
                repeated += 1
                continue
            if keys and self.annotator is not None:
                raise LineError(
                    f"the prompt of line {first_line} already has a preference from "
                    f"{self.annotator}, who can rank a task once; leave out the annotator "
                    "to record each preference of a prompt under its own imported user"
                )
            new = [r.key for r in unit.responses if r.key not in responses]
            if len(responses) + len(new) > MAX_COMPLETIONS:
                raise LineError(
                    f"the prompt of line {first_line} would have {len(responses) + len(new)} "
                    f"different responses; a rank task holds at most {MAX_COMPLETIONS}"
                )
            staged[key] = (responses + new, keys + [unit.key], first_line)
            fresh.append(unit)
        for key, (responses, keys, first_line) in staged.items():
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = _PromptState(first_line)
            state.responses, state.units = responses, keys
        for unit in fresh:
            unit.state = self.states[unit.prompt_key]
        self.report.duplicates += repeated
        return fresh

    def add(self, units: list[_Unit]) -> None:
        self.batch.extend(units)
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        self._mark_existing(batch)
        units = [u for u in batch if not u.state.existing]
        self.report.duplicates += len(batch) - len(units)
        if not units:
            return
        self._create_prompts(units)
        self._create_completions(units)
        annotations = self._create_annotations(units)
        touched = {id(u.state): u.state for u in units}.values()
        Task.objects.bulk_update(
            [
                Task(pk=s.task_id, required_annotations=s.written, assigned_count=s.written,
                     submitted_count=s.written, status=Task.Status.COMPLETE)
                for s in touched
            ],
            ["required_annotations", "assigned_count", "submitted_count", "status"],
        )
        entries: dict[int, list[dict]] = {}
        for unit, annotation in zip(units, annotations, strict=True):
            entries.setdefault(unit.state.prompt_id, []).append(
                unit.meta | {"annotation": annotation.pk})
        prompts = list(Prompt.objects.filter(pk__in=entries).only("id", "metadata"))
        for prompt in prompts:
            prompt.metadata.setdefault("preferences", []).extend(entries[prompt.pk])
        Prompt.objects.bulk_update(prompts, ["metadata"])

    def _mark_existing(self, batch: list[_Unit]) -> None:
        unknown = {u.item.content_hash: u.state for u in batch
                   if u.state.prompt_id is None and not u.state.existing}
        if not unknown:
            return
        for content_hash in Prompt.objects.filter(
            project=self.project, content_hash__in=unknown
        ).values_list("content_hash", flat=True):
            unknown[content_hash].existing = True

    def _create_prompts(self, units: list[_Unit]) -> None:
        project = self.project
        by_state: dict[int, _Unit] = {}
        for unit in units:
            if unit.state.prompt_id is None:
                by_state.setdefault(id(unit.state), unit)  # the prompt as its first line has it
        firsts = list(by_state.values())
        if not firsts:
            return
        prompts = []
        for unit in firsts:
            prompt = prompt_build(project=project, item=unit.item, source=Prompt.Source.IMPORTED)
            if unit.split_key:
                prompt.split = textutil.split_for(
                    unit.split_key, project.split_train, project.split_valid)
            prompt.metadata = {"source": self.source, "format": self.fmt, "preferences": []}
            prompts.append(prompt)
        Prompt.objects.bulk_create(prompts)
        tasks = Task.objects.bulk_create(
            [task_build(project=project, kind=Task.Kind.RANK, prompt=p) for p in prompts])
        for unit, prompt, task in zip(firsts, prompts, tasks, strict=True):
            unit.state.prompt_id, unit.state.task_id = prompt.pk, task.pk
        self.report.added += len(prompts)
        self.report.tasks_created += len(tasks)

    def _create_completions(self, units: list[_Unit]) -> None:
        completions, links = [], []
        for unit in units:
            state = unit.state
            for response in unit.responses:
                position = state.responses.index(response.key)
                if position < len(state.completion_ids):
                    continue
                # Responses are written in the order they were planned: the next is new.
                if position != len(state.completion_ids):
                    raise RuntimeError("preference import: plan and writes out of step")
                completion = Completion(
                    prompt_id=state.prompt_id,
                    text=response.text,
                    source=Completion.Source.IMPORTED,
                    generator=f"imported:{self.source}",
                    generation_params={"source": self.source, "format": self.fmt}
                    | response.params,
                )
                state.completion_ids.append(completion)
                completions.append(completion)
                links.append(TaskCompletion(task_id=state.task_id, completion=completion,
                                            position=position))
        Completion.objects.bulk_create(completions)
        TaskCompletion.objects.bulk_create(links)
        self.report.completions += len(completions)
        for unit in units:
            ids = unit.state.completion_ids
            ids[:] = [c.pk if isinstance(c, Completion) else c for c in ids]

    def _create_annotations(self, units: list[_Unit]) -> list[Annotation]:
        numbers = []
        for unit in units:
            unit.state.written += 1
            numbers.append(unit.state.written)
        annotators = self._annotator_ids(set(numbers))
        now = timezone.now()
        assignments, annotations = [], []
        for unit, number in zip(units, numbers, strict=True):
            state = unit.state
            ranks = {}
            for response in unit.responses:
                position = state.responses.index(response.key)
                ranks[position] = (state.completion_ids[position], response.rank)
            # No one saw them shuffled: the task's order stands in as the display order.
            shown = [ranks[position] for position in sorted(ranks)]
            ranking = [{"completion": cid, "rank": rank, "rating": None, "flags": []}
                       for cid, rank in shown]
            annotator_id = annotators[number]
            assignment = Assignment(
                task_id=state.task_id, annotator_id=annotator_id, project=self.project,
                state=Assignment.State.SUBMITTED, display_order=[cid for cid, _ in shown],
                expires_at=now, finished_at=now,
            )
            _, flagged, responses = ranking_summary(ranking)
            assignments.append(assignment)
            annotations.append(Annotation(
                assignment=assignment, task_id=state.task_id, annotator_id=annotator_id,
                project=self.project, kind=Task.Kind.RANK, ranking=ranking,
                position_rho=None, flagged_responses=flagged, responses=responses,
            ))
        Assignment.objects.bulk_create(assignments)
        Annotation.objects.bulk_create(annotations)
        self.report.preferences += len(annotations)
        return annotations

    def _annotator_ids(self, numbers: set[int]) -> dict[int, int]:
        """Return {preference number: user id}, creating the imported users missing."""
        if self.annotator is not None:
            return dict.fromkeys(numbers, self.annotator.pk)
        missing = {f"imported:{self.source}:{n}": n for n in numbers if n not in self.user_ids}
        if missing:
            User = get_user_model()
            found = dict(User.objects.filter(username__in=missing).values_list("username", "pk"))
            new = []
            for name in missing.keys() - found.keys():
                user = User(username=name, is_active=False)
                user.set_unusable_password()
                new.append(user)
            User.objects.bulk_create(new)
            found.update({user.username: user.pk for user in new})
            self.user_ids.update({n: found[name] for name, n in missing.items()})
        return self.user_ids


def preferences_import(
    *,
    project,
    records: Iterable[tuple[int, dict | None, str | None]],
    fmt: str,
    source: str,
    annotator=None,
    skip_bad_lines: bool = False,
) -> PreferenceImportReport:
    """Import preferences from (line, record, error) triples; all or nothing by default.

    ``fmt`` is "trl" or "oasst"; ``source`` names where the data comes from (letters,
    digits and ._@+/-, up to 100 characters). Return the report; when a line is bad and
    ``skip_bad_lines`` is off, nothing is written and ``report.imported`` is False.
    """
    if fmt not in _PARSERS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    source = (source or "").strip()
    if not _SOURCE.fullmatch(source):
        raise ValueError("give a source name: letters, digits and ._@+/- up to 100 characters")
    parse = _PARSERS[fmt]
    report = PreferenceImportReport()
    try:
        with transaction.atomic():
            writer = _Writer(project=project, report=report, fmt=fmt, source=source,
                             annotator=annotator)
            for line, record, error in records:
                report.lines += 1
                if error is None:
                    try:
                        units = parse(record, line=line, prefix_chars=project.dedup_prefix_chars)
                        fresh = writer.plan(units)
                    except LineError as exc:
                        error = str(exc)
                if error is not None:
                    report.error(line, error)
                    continue
                if not units:
                    report.no_preferences += 1
                if report.bad_lines and not skip_bad_lines:
                    continue  # keep validating to report every bad line; write nothing
                writer.add(fresh)
            if report.bad_lines and not skip_bad_lines:
                raise ImportRejected(report)
            writer.flush()
    except ImportRejected:
        report.imported = False
        report.added = report.duplicates = report.tasks_created = 0
        report.completions = report.preferences = report.no_preferences = 0
    return report


def preferences_import_file(*, project, file, **options) -> PreferenceImportReport:
    """Import a JSON Lines file of preferences opened in binary mode."""
    if isinstance(file, io.TextIOBase):
        raise TypeError("open the file in binary mode")
    # Always JSON Lines, whatever the file is called (records_from_file picks by name).
    return preferences_import(project=project, records=records_from_file(file, ".jsonl"),
                              **options)
