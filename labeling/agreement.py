"""Pure agreement metrics and consensus for rankings and ratings (no Django import).

A ranking is ``{completion_id: rank}``: rank 1 is best and equal ranks are a tie (the
shape ``ranks_of`` makes from ``Annotation.ranking``). A task's rankings are
``{annotator: ranking}``; a project is a list of such tasks.
"""

import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import krippendorff
import numpy as np
from scipy import stats

from labeling.ranking import pairwise_preferences

Ranks = Mapping[Hashable, int]
TaskRankings = Mapping[Hashable, Ranks]

# InstructGPT (Ouyang et al. 2022, section 5.1): labelers agreed on 72.6 +- 1.5% of
# comparisons (training labelers) and 77.3 +- 1.3% (held-out labelers).
INSTRUCTGPT_AGREEMENT = 0.726
INSTRUCTGPT_HELDOUT_AGREEMENT = 0.773

# Rows of resample indices drawn and reduced at once by bootstrap_ci: bounds memory to
# about _CHUNK x len(tasks) x 16 bytes whatever n_resamples is.
_CHUNK = 128


def ranks_of(entries: Sequence[Mapping[str, Any]]) -> dict[Hashable, int]:
    """Return ``{completion: rank}`` from ``Annotation.ranking`` entries, skipping unranked ones."""
    return {e["completion"]: e["rank"] for e in entries if e.get("rank") is not None}


def _common(a: Ranks, b: Ranks) -> tuple[dict, dict]:
    shared = [c for c in a if c in b]
    return {c: a[c] for c in shared}, {c: b[c] for c in shared}


def pairwise_agreement(a: Ranks, b: Ranks) -> float | None:
    """Return the share of response pairs two rankings order the same way.

    Only completions both annotators ranked are compared. A pair counts when at least
    one annotator prefers one response; it agrees when both state the same strict order.
    A tie against a strict order is a disagreement; a pair both annotators tie is left
    out. None when no pair counts (e.g. both rankings tie everything).
    """
    a, b = _common(a, b)
    prefs_a, prefs_b = pairwise_preferences(a), pairwise_preferences(b)
    counted = {frozenset(pair) for pair in prefs_a | prefs_b}
    if not counted:
        return None
    return len(prefs_a & prefs_b) / len(counted)


def kendall_tau_b(a: Ranks, b: Ranks) -> float | None:
    """Return Kendall's tau-b between two rankings over the completions both ranked.

    Tau-b corrects for ties in either ranking. None when it is undefined: fewer than two
    shared completions, or one ranking ties all of them.
    """
    a, b = _common(a, b)
    x, y = list(a.values()), list(b.values())
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    tau = stats.kendalltau(x, y, variant="b").statistic
    return None if math.isnan(tau) else float(tau)


def krippendorff_alpha(
    units: Sequence[Mapping[Hashable, float]],
    level: Literal["ordinal", "nominal", "interval"] = "ordinal",
) -> float | None:
    """Return Krippendorff's alpha over units, each ``{annotator: value}``.

    A unit is one rated item (a response's 1-7 rating or rank, or one flag as 0/1 with
    ``level="nominal"``); an annotator who did not rate it is missing, not a value.
    None when alpha is undefined: no unit has two values, or all paired values are equal.
    """
    annotators = list(dict.fromkeys(a for unit in units for a in unit))
    paired = [v for unit in units if len(unit) >= 2 for v in unit.values()]
    if len(set(paired)) < 2:
        return None
    matrix = np.full((len(annotators), len(units)), np.nan)
    row = {a: i for i, a in enumerate(annotators)}
    for j, unit in enumerate(units):
        for annotator, value in unit.items():
            matrix[row[annotator], j] = value
    alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement=level)
    return None if math.isnan(alpha) else float(alpha)


Coincidences = dict[tuple[Any, Any], float]


def coincidences(units: Iterable[Iterable[Hashable]]) -> Coincidences:
    """Return Krippendorff's coincidence counts ``{(c, k): o_ck}`` of units of values.

    A unit is the values the annotators gave one item (missing ones left out); a unit
    with fewer than two values is not pairable and adds nothing. Coincidences add up over
    units, so a project's figure is the sum of what each task contributes, and
    ``alpha_from_coincidences`` turns any such sum into alpha.
    """
    result: Coincidences = {}
    for unit in units:
        counts = Counter(unit)
        m = sum(counts.values())
        if m < 2:
            continue
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                value = n_c * (n_k - (c == k)) / (m - 1)
                if value:
                    result[(c, k)] = result.get((c, k), 0.0) + value
    return result


def coincidences_add(total: Coincidences, more: Mapping[tuple[Any, Any], float]) -> None:
    """Add the coincidence counts ``more`` into ``total`` in place."""
    for key, value in more.items():
        total[key] = total.get(key, 0.0) + value


def alpha_from_coincidences(
    o: Mapping[tuple[Any, Any], float],
    level: Literal["ordinal", "nominal", "interval"] = "ordinal",
) -> float | None:
    """Return Krippendorff's alpha from coincidence counts (values must be numbers).

    alpha = 1 - (n - 1) * sum o_ck d_ck / sum n_c n_k d_ck, with the nominal, interval
    or ordinal distance of Krippendorff (2011); equal to ``krippendorff_alpha`` over the
    same units. None when undefined (fewer than two distinct values paired).
    """
    values = sorted({c for c, _ in o} | {k for _, k in o})
    if len(values) < 2:
        return None
    index = {v: i for i, v in enumerate(values)}
    matrix = np.zeros((len(values), len(values)))
    for (c, k), value in o.items():
        matrix[index[c], index[k]] += value
    n_c = matrix.sum(axis=1)
    n = n_c.sum()
    v = np.array(values, dtype=float)
    if level == "nominal":
        distance = 1.0 - np.eye(len(values))
    elif level == "interval":
        distance = (v[:, None] - v[None, :]) ** 2
    else:
        # Ordinal: (sum of n_g from c to k, minus half of n_c and n_k) squared.
        cumulative = np.cumsum(n_c)
        low = np.minimum.outer(np.arange(len(values)), np.arange(len(values)))
        high = np.maximum.outer(np.arange(len(values)), np.arange(len(values)))
        between = cumulative[high] - np.concatenate(([0.0], cumulative))[low]
        distance = (between - (n_c[:, None] + n_c[None, :]) / 2) ** 2
    expected = (np.outer(n_c, n_c) * distance).sum()
    if not expected:
        return None
    return float(1 - (n - 1) * (matrix * distance).sum() / expected)


def flag_coincidences(flag_sets: Sequence[Iterable[str]], asked: Sequence[str]) -> Coincidences:
    """Return the 0/1 coincidences of every asked flag on one response.

    ``flag_sets``: the flags each annotator of the response raised. Each asked flag is
    a nominal unit (raised 1, not raised 0); counted directly, because almost every
    unit is all zeros and would cost a Counter each.
    """
    m = len(flag_sets)
    if m < 2:
        return {}
    raised = Counter(f for flags in flag_sets for f in set(flags) if f in asked)
    o: Coincidences = {}
    quiet = len(asked) - len(raised)
    if quiet:
        o[(0, 0)] = float(m * quiet)
    for n1 in raised.values():
        n0 = m - n1
        for key, value in (((1, 1), n1 * (n1 - 1)), ((0, 0), n0 * (n0 - 1)),
                           ((0, 1), n1 * n0), ((1, 0), n1 * n0)):
            if value:
                o[key] = o.get(key, 0.0) + value / (m - 1)
    return o


@dataclass(frozen=True)
class RatioStatistic:
    """A statistic sum(numerator) / sum(denominator) over tasks, from per-task parts.

    ``bootstrap_ci`` recognises it and resamples the per-task parts with numpy instead
    of re-running Python code for every resample.
    """

    per_task: Callable[[Any], tuple[float, float]]

    def parts(self, tasks: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Return per-task numerators and denominators as two float arrays."""
        pairs = [self.per_task(task) for task in tasks]
        numerators = np.array([p[0] for p in pairs], dtype=float)
        denominators = np.array([p[1] for p in pairs], dtype=float)
        return numerators, denominators

    def __call__(self, tasks: Sequence[Any]) -> float | None:
        """Return the statistic over tasks, None when the denominator is zero."""
        numerators, denominators = self.parts(tasks)
        total = denominators.sum()
        return float(numerators.sum() / total) if total else None


def _pair_agreement_parts(rankings: TaskRankings) -> tuple[float, int]:
    values = [pairwise_agreement(rankings[x], rankings[y]) for x, y in combinations(rankings, 2)]
    values = [v for v in values if v is not None]
    return sum(values), len(values)


PROJECT_AGREEMENT = RatioStatistic(_pair_agreement_parts)
GOLD_ACCURACY = RatioStatistic(lambda score: (score, 1))


def annotator_agreement_statistic(annotator: Hashable) -> RatioStatistic:
    """Return ``annotator_agreement`` for one annotator as a bootstrappable statistic."""

    def parts(rankings: TaskRankings) -> tuple[float, int]:
        if annotator not in rankings:
            return 0.0, 0
        mine = rankings[annotator]
        values = [
            pairwise_agreement(mine, theirs)
            for other, theirs in rankings.items()
            if other != annotator
        ]
        values = [v for v in values if v is not None]
        return sum(values), len(values)

    return RatioStatistic(parts)


def task_agreement(rankings: TaskRankings) -> float | None:
    """Return the mean pairwise agreement over every pair of annotators on one task."""
    total, count = _pair_agreement_parts(rankings)
    return total / count if count else None


def project_agreement(tasks: Sequence[TaskRankings]) -> float | None:
    """Return the mean pairwise agreement over every (task, annotator pair) in a project.

    Each annotator pair on each overlapping task weighs the same (a task ranked by three
    annotators gives three pairs), as InstructGPT reports labeler agreement; pairs with
    no defined agreement are left out. Bootstrap with ``PROJECT_AGREEMENT``.
    """
    return PROJECT_AGREEMENT(tasks)


def annotator_agreement(tasks: Sequence[TaskRankings], annotator: Hashable) -> float | None:
    """Return one annotator's mean pairwise agreement with every other annotator, task by task.

    Leave-one-out: each (task, other annotator) pair the annotator shares weighs the same.
    None when the annotator shares no task (with a defined agreement) with anyone.
    """
    return annotator_agreement_statistic(annotator)(tasks)


def gold_accuracy(scores: Sequence[float]) -> float | None:
    """Return the mean of per-task gold scores, None when there are none."""
    return GOLD_ACCURACY(scores)


def id_key(completion: Hashable) -> tuple[str, Any]:
    """Return a sort key ordering ints among ints and strs among strs (ids, annotators).

    Mixing both still gives a fixed order. Exports hash rows in this order: keep one copy.
    """
    return type(completion).__name__, completion


def _margins(rankings: Sequence[Ranks]) -> tuple[list, dict[tuple, int]]:
    completions = sorted({c for ranks in rankings for c in ranks}, key=id_key)
    wins: dict[tuple, int] = {}
    for ranks in rankings:
        for pair in pairwise_preferences(ranks):
            wins[pair] = wins.get(pair, 0) + 1
    margins = {}
    for x, y in combinations(completions, 2):
        margin = wins.get((x, y), 0) - wins.get((y, x), 0)
        margins[(x, y) if margin >= 0 else (y, x)] = abs(margin)
    return completions, margins


def _dense_ranks(scores: Mapping[Hashable, float]) -> dict[Hashable, int]:
    levels = sorted(set(scores.values()), reverse=True)
    place = {level: i for i, level in enumerate(levels, start=1)}
    return {c: place[s] for c, s in scores.items()}


def consensus_ranked_pairs(rankings: Sequence[Ranks]) -> dict[Hashable, int]:
    """Return the Tideman ranked-pairs consensus of rankings as dense ranks (1 = best).

    Every completion any ranking holds takes part. Each pair's margin is the number of
    rankings preferring x to y minus those preferring y to x (ties and rankings without
    both count for neither). Pairs with a positive margin are locked in by decreasing
    margin, equal margins in order of (winner, loser) ids, skipping any that would close a
    cycle. Ranks are then the tiers of the locked graph: the completions no locked pair
    beats get rank 1, are removed, and so on. Two completions tie exactly when they reach
    the same tier, so never when a locked pair joins them; pairs with a zero margin lock
    nothing, which is how tied and unopposed completions come to share a rank. Identical
    dense rankings (ties included) give that ranking back.
    """
    completions, margins = _margins(rankings)
    order = {c: i for i, c in enumerate(completions)}
    majorities = sorted(
        ((margin, winner, loser) for (winner, loser), margin in margins.items() if margin > 0),
        key=lambda m: (-m[0], order[m[1]], order[m[2]]),
    )
    beats: dict[Hashable, set] = {c: set() for c in completions}
    for _, winner, loser in majorities:
        if not _reaches(beats, loser, winner):
            beats[winner].add(loser)
    beaten_by = {c: 0 for c in completions}
    for winner in beats:
        for loser in beats[winner]:
            beaten_by[loser] += 1
    ranks: dict[Hashable, int] = {}
    tier = [c for c in completions if beaten_by[c] == 0]
    rank = 1
    while tier:
        following = []
        for c in tier:
            ranks[c] = rank
            for loser in beats[c]:
                beaten_by[loser] -= 1
                if beaten_by[loser] == 0:
                    following.append(loser)
        tier, rank = following, rank + 1
    return ranks


def _reaches(beats: Mapping[Hashable, set], start: Hashable, goal: Hashable) -> bool:
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        for nxt in beats[node] - seen:
            seen.add(nxt)
            stack.append(nxt)
    return False


def consensus_borda(rankings: Sequence[Ranks]) -> dict[Hashable, int]:
    """Return the Borda consensus of rankings as dense ranks (1 = best).

    A completion scores, in each ranking that holds it, the number of completions ranked
    below it minus those ranked above it; tied completions add nothing to each other.
    Equal total scores tie. Identical dense rankings (ties included) give that ranking back.
    """
    scores: dict[Hashable, int] = {}
    for ranks in rankings:
        for c in ranks:
            scores.setdefault(c, 0)
        for better, worse in pairwise_preferences(ranks):
            scores[better] += 1
            scores[worse] -= 1
    return _dense_ranks(scores)


def position_bias(pairs: Sequence[tuple[int, int]]) -> float | None:
    """Return Spearman's correlation between display position and given rank.

    ``pairs``: (display position, rank) for the responses of one ranking. Positive means
    responses shown later get worse ranks (a primacy bias); negative, the reverse; near
    0, no bias. None when either side is constant (e.g. everything tied). An annotator's
    position bias is the mean of this over their rankings: pooling rankings of different
    tasks into one correlation would mix rank scales.
    """
    positions = [p for p, _ in pairs]
    ranks = [r for _, r in pairs]
    if len(set(positions)) < 2 or len(set(ranks)) < 2:
        return None
    # Spearman's rho is Pearson's r of the average ranks. Written out rather than
    # scipy.stats.spearmanr: it runs on every submit, for K <= 9 values, where scipy's
    # checks cost about 180 microseconds and this about 10 (tests compare the two).
    x, y = _average_ranks(positions), _average_ranks(ranks)
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def _average_ranks(values: Sequence[float]) -> list[float]:
    """Return 1-based ranks, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def ranking_summary(entries: Sequence[Mapping[str, Any]]) -> tuple[float | None, int, int]:
    """Return (position bias, flagged responses, responses) of one stored ranking.

    ``entries`` are ``Annotation.ranking``, in display order; a response counts as
    flagged when it has at least one flag.
    """
    ranked = [(i, e["rank"]) for i, e in enumerate(entries) if e.get("rank") is not None]
    flagged = sum(1 for e in entries if e.get("flags"))
    return position_bias(ranked), flagged, len(entries)


def _resample_indices(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, _CHUNK):
        yield rng.integers(0, n, size=(min(_CHUNK, n_resamples - start), n))


def bootstrap_ci(
    tasks: Sequence[Any],
    statistic: Callable[[Sequence[Any]], float | None],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Return a percentile bootstrap interval (low, high) for a statistic over tasks.

    Tasks are resampled with replacement; the same seed gives the same interval. A
    ``RatioStatistic`` (e.g. ``PROJECT_AGREEMENT``) is resampled with numpy from its
    per-task parts; any other callable runs once per resample. Resamples where the
    statistic is None are left out; None when there are no tasks or no resample has a value.
    """
    if not tasks:
        return None
    n = len(tasks)
    values: list[np.ndarray] = []
    if isinstance(statistic, RatioStatistic):
        numerators, denominators = statistic.parts(tasks)
        for idx in _resample_indices(n, n_resamples, seed):
            num, den = numerators[idx].sum(axis=1), denominators[idx].sum(axis=1)
            values.append(np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0))
    else:
        for idx in _resample_indices(n, n_resamples, seed):
            chunk = [statistic([tasks[i] for i in row]) for row in idx]
            values.append(np.array([np.nan if v is None else v for v in chunk], dtype=float))
    estimates = np.concatenate(values)
    estimates = estimates[~np.isnan(estimates)]
    if not estimates.size:
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)
