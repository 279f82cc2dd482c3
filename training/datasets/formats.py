"""Pure cores of dataset exports: pairs from rankings, merges, TRL rows, canonical hashing.

No Django import. A prompt is a plain string or a chat, a non-empty list of
``{"role", "content"}`` messages. A ranking is ``{completion_id: rank}``: rank 1 is best
and equal ranks are a tie (``labeling.agreement.ranks_of`` makes one from
``Annotation.ranking``). Ratings are ``{completion_id: rating}`` (1-7).

The row builders write what TRL 1.16 reads as is, one JSON object per line:

- SFT, prompt-completion: ``{"prompt", "completion"}``. SFTTrainer trains on the
  completion only for this form (``completion_only_loss`` defaults to on when both
  columns exist). The ``"messages"`` form would train on the prompt too, unless
  ``assistant_only_loss`` and a chat template with ``{% generation %}`` markers.
- Preference, explicit prompt: ``{"prompt", "chosen", "rejected"}``, plus ``"margin"``,
  which RewardTrainer subtracts inside its loss (DPOTrainer ignores it).
- Rankings (Laoshi's K-way reward model; no TRL trainer reads it) and prompts (the PPO
  prompt pool: every TRL online trainer reads the ``"prompt"`` column).

A file is either standard (plain strings) or conversational (messages): Arrow gives each
column one type for the whole file, so a column that is a string in one row and a list
in another cannot be loaded. Every builder takes ``conversational``: in a conversational
file a plain prompt becomes one user message (which is how the generation backend shows
it to a model with a chat template), and a chat cannot go in a standard file. In a
standard file TRL joins prompt and completion with no separator, as a raw continuation.

``extra`` keys become extra top-level columns (ids, category). Both trainers keep them
through tokenizing and drop them before batching (``remove_unused_columns``), and their
collators ignore them when that is off; a name TRL reads itself is refused.
"""

import functools
import hashlib
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from itertools import combinations
from typing import Any, Literal, NamedTuple

import orjson

from labeling.agreement import consensus_ranked_pairs, id_key
from labeling.ranking import pairwise_preferences

Ranks = Mapping[Hashable, int]
Ratings = Mapping[Hashable, float]
Message = dict[str, str]
Prompt = str | Sequence[Mapping[str, str]]
PairPolicy = Literal["all", "adjacent"]
Merge = Literal["per_annotator", "consensus", "majority"]

PAIR_POLICIES = ("all", "adjacent")
MERGES = ("per_annotator", "consensus", "majority")

# Columns TRL 1.16 reads by name: an extra column with one of these names would be taken
# for data ("tools" goes to the chat template, "conversations" is converted to
# "messages", "input_ids" or "chosen_ids" make the trainers skip tokenizing).
TRL_COLUMNS = frozenset({
    "prompt", "completion", "chosen", "rejected", "margin", "messages", "text",
    "conversations", "tools", "chat_template_kwargs", "image", "images", "input_ids",
    "attention_mask", "labels", "completion_mask", "assistant_masks", "position_ids",
    "seq_lengths", "chosen_ids", "rejected_ids", "chosen_input_ids", "rejected_input_ids",
})


class Pair(NamedTuple):
    """One preference: chosen beats rejected, by an optional margin (never negative)."""

    chosen: Hashable
    rejected: Hashable
    margin: float | None = None


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _check_ranks(ranks: Ranks) -> None:
    for cid, rank in ranks.items():
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"the rank of completion {cid!r} must be a whole number >= 1, "
                             f"not {rank!r}")


def _rating_margin(ratings: Ratings | None, chosen: Hashable, rejected: Hashable) -> float | None:
    if ratings is None:
        return None
    better, worse = ratings.get(chosen), ratings.get(rejected)
    if better is None or worse is None:
        return None
    # A rating can contradict the ranking (ranked first, rated lower): the pair still
    # stands, with no margin, since a negative one would push the rewards the wrong way.
    return float(max(0, better - worse))


def pairs_from_ranking(
    ranks: Ranks,
    *,
    policy: PairPolicy = "all",
    ratings: Ratings | None = None,
    margin: bool = False,
) -> list[Pair]:
    """Return the preference pairs one ranking states, best rank level first.

    ``"all"``: every two completions with different ranks, C(K, 2) for a strict ranking;
    ``"adjacent"``: only those of consecutive rank levels (for ranks 1, 2, 2, 3: level 1
    x level 2 and level 2 x level 3). Tied completions give no pair. With ``margin``, a
    pair's margin is max(0, rating of chosen - rating of rejected) when both ratings
    exist, else None; without, None. Pairs are ordered by the chosen side's (rank, id),
    then the rejected side's.
    """
    _check_choice(policy, PAIR_POLICIES, "policy")
    _check_ranks(ranks)
    ids = sorted(ranks, key=id_key)
    # The pairs depend only on the rank pattern (75 of them for K=4): computed once per
    # pattern as positions in id order, then mapped to this ranking's ids.
    positions = _pattern_pairs(tuple(ranks[c] for c in ids), policy)
    return [Pair(ids[b], ids[w], _rating_margin(ratings, ids[b], ids[w]) if margin else None)
            for b, w in positions]


@functools.lru_cache(maxsize=4096)
def _pattern_pairs(pattern: tuple[int, ...], policy: str) -> tuple[tuple[int, int], ...]:
    """Return (better, worse) positions of a rank pattern, in the order of pairs_from_ranking."""
    ranks = dict(enumerate(pattern))
    level = {rank: i for i, rank in enumerate(sorted(set(pattern)))}
    pairs = [
        (better, worse)
        for better, worse in pairwise_preferences(ranks)
        if policy == "all" or level[ranks[worse]] == level[ranks[better]] + 1
    ]
    # Positions follow id order, so sorting by position sorts by id.
    pairs.sort(key=lambda p: (ranks[p[0]], p[0], ranks[p[1]], p[1]))
    return tuple(pairs)


def consensus_ranking(rankings: Mapping[Hashable, Ranks]) -> dict[Hashable, int]:
    """Return the ranked-pairs consensus of a task's rankings as dense ranks (1 = best)."""
    for ranks in rankings.values():
        _check_ranks(ranks)
    return consensus_ranked_pairs([rankings[a] for a in sorted(rankings, key=id_key)])


def _mean_ratings(all_ratings: Sequence[Ratings]) -> dict[Hashable, float]:
    totals: dict[Hashable, list[float]] = {}
    for ratings in all_ratings:
        for cid, rating in ratings.items():
            if rating is not None:
                totals.setdefault(cid, []).append(rating)
    return {cid: sum(values) / len(values) for cid, values in totals.items()}


def task_pairs(
    rankings: Mapping[Hashable, Ranks],
    *,
    merge: Merge = "per_annotator",
    policy: PairPolicy = "all",
    ratings: Mapping[Hashable, Ratings] | None = None,
    margin: bool = False,
) -> list[tuple[Hashable | None, Pair]]:
    """Return the (annotator, pair) samples of one task ranked by several annotators.

    ``"per_annotator"``: each annotator's own pairs, annotators in id order.
    ``"consensus"``: the pairs of ``consensus_ranking``, margins from mean ratings.
    ``"majority"``: for every two completions, the side strictly more annotators prefer
    (equal counts give no pair); the margin is the vote difference over the annotators
    who ranked both. With ``"adjacent"``, a majority pair is kept only when no completion
    sits between its sides by majority (with one annotator: the adjacent rank levels).
    Merged pairs carry annotator None and follow the consensus ranking's order.
    """
    _check_choice(merge, MERGES, "merge")
    _check_choice(policy, PAIR_POLICIES, "policy")
    ratings = ratings or {}
    annotators = sorted(rankings, key=id_key)
    if merge == "per_annotator":
        return [
            (annotator, pair)
            for annotator in annotators
            for pair in pairs_from_ranking(rankings[annotator], policy=policy,
                                           ratings=ratings.get(annotator), margin=margin)
        ]
    consensus = consensus_ranking(rankings)
    if merge == "consensus":
        mean = _mean_ratings([ratings[a] for a in annotators if a in ratings])
        pairs = pairs_from_ranking(consensus, policy=policy, ratings=mean, margin=margin)
        return [(None, pair) for pair in pairs]
    return [(None, pair) for pair in _majority_pairs(
        [rankings[a] for a in annotators], consensus, policy=policy, margin=margin)]


def _majority_pairs(
    rankings: Sequence[Ranks], consensus: Mapping[Hashable, int], *, policy: str, margin: bool
) -> list[Pair]:
    votes: Counter = Counter()
    for ranks in rankings:
        votes.update(pairwise_preferences(ranks))
    # The consensus ranks every completion any ranking holds.
    completions = sorted(consensus, key=id_key)
    won: dict[tuple[Hashable, Hashable], float] = {}
    for x, y in combinations(completions, 2):
        for_x, for_y = votes[(x, y)], votes[(y, x)]
        if for_x == for_y:
            continue
        # Everyone who ranked both counts, ties included: a tie weakens the majority.
        both = sum(1 for ranks in rankings if x in ranks and y in ranks)
        winner, loser = (x, y) if for_x > for_y else (y, x)
        won[(winner, loser)] = abs(for_x - for_y) / both
    if policy == "adjacent":
        # Majorities can cycle, so there are no rank levels; "nothing in between" is the
        # same as adjacent levels for one ranking and still defined for a cycle.
        won = {
            (winner, loser): m for (winner, loser), m in won.items()
            if not any((winner, z) in won and (z, loser) in won for z in completions)
        }
    order = sorted(won, key=lambda p: (consensus[p[0]], id_key(p[0]),
                                       consensus[p[1]], id_key(p[1])))
    return [Pair(winner, loser, won[(winner, loser)] if margin else None)
            for winner, loser in order]


def is_chat(prompt: Any) -> bool:
    """Return whether a prompt is a chat: a non-empty list of {"role", "content"} messages."""
    return (
        isinstance(prompt, list | tuple)
        and bool(prompt)
        and all(
            isinstance(m, Mapping)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in prompt
        )
    )


def as_messages(prompt: Prompt) -> list[Message]:
    """Return a prompt as chat messages; a plain prompt becomes one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not is_chat(prompt):
        raise ValueError(f"a prompt must be a string or a list of {{role, content}} messages, "
                         f"not {prompt!r}")
    # Role and content only: Arrow gives a column one struct type, so a key that one
    # message has would be added, as null, to every message of the file.
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _prompt_value(prompt: Prompt, conversational: bool) -> str | list[Message]:
    if conversational:
        return as_messages(prompt)
    if isinstance(prompt, str):
        return prompt
    raise ValueError("a chat prompt can only go in a conversational file (conversational=True)")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {value!r}")
    return value


def _answer(text: Any, what: str, conversational: bool) -> str | list[Message]:
    text = _text(text, what)
    return [{"role": "assistant", "content": text}] if conversational else text


def _with_extra(row: dict[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    for key, value in (extra or {}).items():
        if key in row or key in TRL_COLUMNS:
            raise ValueError(f"extra column {key!r} clashes with a column of the row or of TRL")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"extra column {key!r} is {value!r}: JSON has no NaN or infinity")
    row.update(extra or {})
    return row


def sft_row(
    prompt: Prompt,
    response: str,
    *,
    conversational: bool,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a prompt-completion row for SFTTrainer (completion-only loss)."""
    return _with_extra({
        "prompt": _prompt_value(prompt, conversational),
        "completion": _answer(response, "response", conversational),
    }, extra)


def _margin(margin: Any) -> float:
    if isinstance(margin, bool) or not isinstance(margin, int | float) \
            or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, not {margin!r}")
    # Always a float: a file of whole-number margins would otherwise load as int64.
    return float(margin)


def preference_row(
    prompt: Prompt,
    chosen_text: str,
    rejected_text: str,
    *,
    conversational: bool,
    margin: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return an explicit-prompt preference row for RewardTrainer, with "margin" if given.

    RewardTrainer fails on a null margin, so within a file every row or none must carry
    one (``check_columns`` finds a file that mixes them).
    """
    row = {
        "prompt": _prompt_value(prompt, conversational),
        "chosen": _answer(chosen_text, "chosen_text", conversational),
        "rejected": _answer(rejected_text, "rejected_text", conversational),
    }
    if margin is not None:
        row["margin"] = _margin(margin)
    return _with_extra(row, extra)


def preference_rows(
    prompt: Prompt,
    pairs: Iterable[tuple[str, str, float | None, Mapping[str, Any] | None]],
    *,
    conversational: bool,
    extra: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield ``preference_row`` for each (chosen, rejected, margin, more extra) of one prompt.

    The same rows as calling ``preference_row`` per pair, with the prompt and the shared
    extra columns checked once: an export writes millions of pairs of a few prompts each.
    """
    base = preference_row(prompt, "", "", conversational=conversational, extra=extra)
    del base["chosen"], base["rejected"]
    checked = None
    for chosen_text, rejected_text, margin, more in pairs:
        row = dict(base)
        row["chosen"] = _answer(chosen_text, "chosen_text", conversational)
        row["rejected"] = _answer(rejected_text, "rejected_text", conversational)
        if margin is not None:
            row["margin"] = _margin(margin)
        if more:
            if more.keys() != checked:  # the per-pair columns are the same for every pair
                _with_extra(dict(base), more)
                checked = more.keys()
            row.update(more)
        yield row


def rankings_row(
    *,
    task_id: Hashable,
    prompt: Prompt,
    responses: Sequence[tuple[Hashable, str]],
    annotators: Sequence[Mapping[str, Any]],
    consensus: Ranks,
    agreement: float | None,
    conversational: bool,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return one task's row with every annotator's raw ranking, ratings and flags.

    ``annotators``: ``[{"annotator", "ranks": {cid: rank}, "ratings": {cid: rating},
    "flags": {cid: [flag]}}]`` (ratings and flags optional). Every per-response list of
    the row is aligned with ``responses``: ``ranks[i]`` is the rank of ``responses[i]``,
    null where that annotator gave none; annotators come in id order, flags sorted.
    """
    ids = [cid for cid, _ in responses]
    if len(set(ids)) != len(ids):
        raise ValueError(f"completion ids repeat in responses: {ids!r}")
    known = set(ids)

    def aligned(values: Mapping[Hashable, Any], what: str) -> list[Any]:
        unknown = [cid for cid in values if cid not in known]
        if unknown:
            raise ValueError(f"{what} names completions not in responses: {unknown!r}")
        return [values.get(cid) for cid in ids]

    records = []
    for entry in sorted(annotators, key=lambda e: id_key(e["annotator"])):
        who = entry["annotator"]
        _check_ranks(entry["ranks"])
        records.append({
            "annotator": who,
            "ranks": aligned(entry["ranks"], f"annotator {who!r}'s ranks"),
            "ratings": aligned(entry.get("ratings") or {}, f"annotator {who!r}'s ratings"),
            "flags": [sorted(flags or []) for flags in
                      aligned(entry.get("flags") or {}, f"annotator {who!r}'s flags")],
        })
    names = [r["annotator"] for r in records]
    if len(set(names)) != len(names):
        raise ValueError(f"an annotator appears twice: {names!r}")
    _check_ranks(consensus)
    row = {
        "task_id": task_id,
        "prompt": _prompt_value(prompt, conversational),
        "responses": [{"completion_id": cid, "text": _text(text, f"response {cid!r}")}
                      for cid, text in responses],
        "annotators": records,
        "consensus": aligned(consensus, "consensus"),
        # A float even when whole: one column type across the file.
        "agreement": None if agreement is None else float(agreement),
    }
    return _with_extra(row, extra)


def prompt_row(
    *, prompt_id: Hashable, prompt: Prompt, category: str | None, split: str, conversational: bool
) -> dict[str, Any]:
    """Return a row of the PPO prompt pool."""
    return {
        "prompt_id": prompt_id,
        "prompt": _prompt_value(prompt, conversational),
        "category": category,
        "split": split,
    }


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def check_columns(rows: Iterable[Mapping[str, Any]]) -> None:
    """Raise ValueError unless all rows have the same columns, each of one kind (nulls aside)."""
    columns: set[str] | None = None
    kinds: dict[str, tuple[str, int]] = {}
    for index, row in enumerate(rows):
        if columns is None:
            columns = set(row)
        elif set(row) != columns:
            raise ValueError(f"row {index} has columns {sorted(row)}, "
                             f"but the first row has {sorted(columns)}")
        for key, value in row.items():
            kind = _kind(value)
            if kind is None:
                continue
            first_kind, first_index = kinds.setdefault(key, (kind, index))
            if kind != first_kind:
                raise ValueError(f"column {key!r} is a {kind} in row {index} "
                                 f"but a {first_kind} in row {first_index}")


def canonical_line(row: Mapping[str, Any]) -> bytes:
    """Return a row as one line of compact JSON with sorted keys, UTF-8, newline-terminated."""
    # orjson writes the same compact, key-sorted UTF-8 JSON as json.dumps(sort_keys=True,
    # ensure_ascii=False, separators=(",", ":")) about fifteen times faster (an export
    # writes millions of lines). It would write NaN as null: the row builders refuse
    # non-finite floats instead (JSON has none, and the json loader of datasets too).
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)


class ContentHash:
    """Hash rows as canonical lines: one sha256 per split, and one over all splits.

    The same rows in the same order give the same digest. The overall digest hashes the
    splits' names, row counts and digests in name order, so it does not depend on how
    rows of different splits were interleaved. ``rows`` counts the rows of each split.
    """

    def __init__(self) -> None:
        self._hashes: dict[str, Any] = {}
        self.rows: dict[str, int] = {}

    def update(self, row: Mapping[str, Any], *, split: str) -> bytes:
        """Add a row to a split and return its canonical line (the bytes to write)."""
        line = canonical_line(row)
        if split not in self._hashes:
            self._hashes[split] = hashlib.sha256()
            self.rows[split] = 0
        self._hashes[split].update(line)
        self.rows[split] += 1
        return line

    @property
    def splits(self) -> list[str]:
        """Return the names of the splits that have rows, sorted."""
        return sorted(self._hashes)

    def hexdigest(self, split: str | None = None) -> str:
        """Return the hex digest of one split (KeyError if it has no rows) or of all splits."""
        if split is not None:
            return self._hashes[split].hexdigest()
        total = hashlib.sha256()
        for name in self.splits:
            total.update(canonical_line([name, self.rows[name], self._hashes[name].hexdigest()]))
        return total.hexdigest()
