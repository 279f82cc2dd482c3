import math
import random

import krippendorff
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from labeling.agreement import (
    GOLD_ACCURACY,
    PROJECT_AGREEMENT,
    RatioStatistic,
    alpha_from_coincidences,
    annotator_agreement,
    annotator_agreement_statistic,
    bootstrap_ci,
    coincidences,
    coincidences_add,
    consensus_borda,
    consensus_ranked_pairs,
    flag_coincidences,
    gold_accuracy,
    kendall_tau_b,
    krippendorff_alpha,
    pairwise_agreement,
    position_bias,
    project_agreement,
    ranks_of,
    task_agreement,
)

STRICT = {1: 1, 2: 2, 3: 3}
REVERSED = {1: 3, 2: 2, 3: 1}
TIED_TOP = {1: 1, 2: 1, 3: 2}

FAST = settings(max_examples=60, deadline=None)


def dense(values: list[int]) -> list[int]:
    """Return values as dense ranks (1, 1, 2 ...), keeping their order and ties."""
    place = {v: i for i, v in enumerate(sorted(set(values)), start=1)}
    return [place[v] for v in values]


dense_rankings = st.lists(st.integers(1, 5), min_size=1, max_size=9).map(
    lambda values: {cid: rank for cid, rank in enumerate(dense(values), start=100)}
)


def test_ranks_of_reads_annotation_entries():
    entries = [
        {"completion": 7, "rank": 2, "rating": 5, "flags": []},
        {"completion": 9, "rank": 1, "rating": 6, "flags": ["hallucination"]},
        {"completion": 4, "rank": None, "rating": 3, "flags": []},
    ]
    assert ranks_of(entries) == {7: 2, 9: 1}


def test_pairwise_agreement_is_one_for_identical_rankings():
    assert pairwise_agreement({1: 1, 2: 2, 3: 3, 4: 4}, {1: 1, 2: 2, 3: 3, 4: 4}) == 1.0


def test_pairwise_agreement_is_zero_for_a_complete_reversal():
    assert pairwise_agreement({1: 1, 2: 2, 3: 3, 4: 4}, {1: 4, 2: 3, 3: 2, 4: 1}) == 0.0


def test_a_tie_against_a_strict_order_is_a_disagreement():
    # (1, 2): tie vs 1 > 2 disagrees; (1, 3) and (2, 3) agree.
    assert pairwise_agreement(TIED_TOP, STRICT) == pytest.approx(2 / 3)


def test_a_pair_both_annotators_tie_is_left_out():
    a = {1: 1, 2: 1, 3: 2, 4: 3}
    b = {1: 1, 2: 1, 3: 3, 4: 2}
    # (1, 2) both tied: left out. (3, 4) disagrees; the other four pairs agree.
    assert pairwise_agreement(a, b) == pytest.approx(4 / 5)


def test_pairwise_agreement_is_none_when_no_pair_counts():
    assert pairwise_agreement({1: 1, 2: 1}, {1: 1, 2: 1}) is None
    assert pairwise_agreement({1: 1}, {2: 1}) is None


def test_pairwise_agreement_compares_only_completions_both_ranked():
    assert pairwise_agreement({1: 1, 2: 2, 3: 3}, {2: 1, 1: 2, 9: 3}) == 0.0


def test_kendall_tau_b_hand_cases():
    assert kendall_tau_b(STRICT, STRICT) == pytest.approx(1.0)
    assert kendall_tau_b(STRICT, REVERSED) == pytest.approx(-1.0)
    # Concordant 2, discordant 0, one tie in x: 2 / sqrt(2 * 3).
    assert kendall_tau_b(TIED_TOP, STRICT) == pytest.approx(2 / math.sqrt(6))


def test_kendall_tau_b_is_none_when_undefined():
    assert kendall_tau_b({1: 1, 2: 1, 3: 1}, STRICT) is None
    assert kendall_tau_b({1: 1}, {1: 1}) is None


@FAST
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=0, max_size=9))
def test_kendall_tau_b_matches_scipy(pairs):
    a = {i: x for i, (x, _) in enumerate(pairs)}
    b = {i: y for i, (_, y) in enumerate(pairs)}
    tau = kendall_tau_b(a, b)
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        assert tau is None
    else:
        assert tau == pytest.approx(stats.kendalltau(xs, ys, variant="b").statistic)


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units.
TEXTBOOK = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


# Units rated 1-7 by up to five coders, each missing some.
RATED_UNITS = st.lists(
    st.dictionaries(st.sampled_from("abcde"), st.integers(1, 7), max_size=5),
    min_size=1, max_size=12,
)
LEVELS = st.sampled_from(["ordinal", "nominal", "interval"])


def as_units(rows: list[list]) -> list[dict]:
    return [
        {f"coder{i}": row[j] for i, row in enumerate(rows) if row[j] is not None}
        for j in range(len(rows[0]))
    ]


@pytest.mark.parametrize(
    ("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)]
)
def test_krippendorff_alpha_on_the_textbook_example(level, expected):
    assert krippendorff_alpha(as_units(TEXTBOOK), level) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_alpha_is_one_for_perfect_agreement_and_none_when_undefined():
    assert krippendorff_alpha([{"a": 1, "b": 1}, {"a": 5, "b": 5}]) == pytest.approx(1.0)
    assert krippendorff_alpha([{"a": 3, "b": 3}, {"a": 3, "b": 3}]) is None
    assert krippendorff_alpha([{"a": 1}, {"b": 2}]) is None
    assert krippendorff_alpha([]) is None


@FAST
@given(
    RATED_UNITS,
    LEVELS,
)
def test_krippendorff_alpha_matches_the_krippendorff_package(units, level):
    coders = "abcde"
    matrix = [[unit.get(c, np.nan) for unit in units] for c in coders]
    try:
        expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement=level)
    except ValueError:
        expected = math.nan
    alpha = krippendorff_alpha(units, level)
    if alpha is None:
        assert math.isnan(expected)
    else:
        assert alpha == pytest.approx(expected)


@pytest.mark.parametrize(
    ("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)]
)
def test_alpha_from_coincidences_on_the_textbook_example(level, expected):
    o = coincidences(unit.values() for unit in as_units(TEXTBOOK))
    assert alpha_from_coincidences(o, level) == pytest.approx(expected, abs=5e-4)


@FAST
@given(
    RATED_UNITS,
    st.integers(0, 12),
    LEVELS,
)
def test_coincidences_summed_over_parts_give_the_alpha_of_all_units(units, cut, level):
    # Tasks store their own coincidences; the project's alpha comes from their sum.
    total: dict = {}
    coincidences_add(total, coincidences(u.values() for u in units[:cut]))
    coincidences_add(total, coincidences(u.values() for u in units[cut:]))
    expected = krippendorff_alpha(units, level)
    alpha = alpha_from_coincidences(total, level)
    if expected is None:
        assert alpha is None or math.isnan(alpha)
    else:
        assert alpha == pytest.approx(expected)


@FAST
@given(
    st.lists(st.lists(st.sampled_from(["pii", "violent", "opinion", "other"]), max_size=3),
             min_size=0, max_size=5),
)
def test_flag_coincidences_equal_the_general_count_of_0_1_units(flag_sets):
    asked = ["pii", "violent", "opinion"]
    units = [[int(flag in flags) for flags in flag_sets] for flag in asked]
    expected = coincidences(units)
    got = flag_coincidences(flag_sets, asked)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value)


def test_task_agreement_averages_annotator_pairs():
    assert task_agreement({"x": STRICT, "y": STRICT, "z": REVERSED}) == pytest.approx(1 / 3)
    assert task_agreement({"x": STRICT}) is None


TASKS = [
    {"x": STRICT, "y": STRICT, "z": REVERSED},  # x-y 1, x-z 0, y-z 0
    {"x": STRICT, "y": TIED_TOP},  # x-y 2/3
]


def test_project_agreement_weighs_every_annotator_pair_the_same():
    expected = (1 + 0 + 0 + 2 / 3) / 4
    assert project_agreement(TASKS) == pytest.approx(expected)
    assert PROJECT_AGREEMENT(TASKS) == pytest.approx(expected)
    assert project_agreement([]) is None


def test_annotator_agreement_is_leave_one_out():
    assert annotator_agreement(TASKS, "x") == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert annotator_agreement(TASKS, "z") == 0.0
    assert annotator_agreement(TASKS, "nobody") is None


def test_gold_accuracy_is_the_mean_score():
    assert gold_accuracy([1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert gold_accuracy([]) is None


def cycle_ballots(ab: int, bc: int, ca: int) -> list[dict]:
    """Return ballots whose majorities are A>B by ab, B>C by bc and C>A by ca (same parity)."""
    a, b, c = "A", "B", "C"
    return (
        [{a: 1, b: 2, c: 3}] * ((ab + bc) // 2)
        + [{b: 1, c: 2, a: 3}] * ((bc + ca) // 2)
        + [{c: 1, a: 2, b: 3}] * ((ab + ca) // 2)
    )


def test_ranked_pairs_drops_the_weakest_link_of_a_cycle():
    # A>B by 5 and B>C by 3 lock in; C>A by 1 would close the cycle.
    assert consensus_ranked_pairs(cycle_ballots(5, 3, 1)) == {"A": 1, "B": 2, "C": 3}
    # B>C by 5 and C>A by 3 lock in; A>B by 1 is dropped.
    assert consensus_ranked_pairs(cycle_ballots(1, 5, 3)) == {"B": 1, "C": 2, "A": 3}


def test_ranked_pairs_breaks_equal_margins_by_ids():
    # Every margin is 1: (A, B) locks first, then (B, C); (C, A) would close the cycle.
    assert consensus_ranked_pairs(cycle_ballots(1, 1, 1)) == {"A": 1, "B": 2, "C": 3}


def test_ranked_pairs_ties_completions_with_a_zero_margin():
    rankings = [{"A": 1, "B": 2, "C": 3}, {"B": 1, "A": 2, "C": 3}]
    assert consensus_ranked_pairs(rankings) == {"A": 1, "B": 1, "C": 2}
    assert consensus_ranked_pairs([TIED_TOP, TIED_TOP]) == TIED_TOP


def test_consensus_includes_completions_only_some_rankings_hold():
    rankings = [{1: 1, 2: 2}, {2: 1, 3: 2}]
    assert consensus_ranked_pairs(rankings) == {1: 1, 2: 2, 3: 3}
    assert consensus_borda(rankings) == {1: 1, 2: 2, 3: 3}


def test_borda_hand_example():
    rankings = [{"A": 1, "B": 2, "C": 3}, {"B": 1, "A": 2, "C": 3}, {"A": 1, "B": 1, "C": 2}]
    assert consensus_borda(rankings) == {"A": 1, "B": 1, "C": 2}
    assert consensus_borda([]) == {}
    assert consensus_ranked_pairs([]) == {}


@FAST
@given(dense_rankings, st.integers(1, 4))
def test_consensus_of_identical_rankings_is_that_ranking(ranks, copies):
    assert consensus_ranked_pairs([ranks] * copies) == ranks
    assert consensus_borda([ranks] * copies) == ranks


def test_position_bias():
    assert position_bias([(1, 1), (2, 2), (3, 3), (4, 4)]) == pytest.approx(1.0)
    assert position_bias([(1, 4), (2, 3), (3, 2), (4, 1)]) == pytest.approx(-1.0)
    pairs = [(1, 2), (2, 1), (3, 3), (4, 3), (1, 1), (2, 3)]
    expected = stats.spearmanr([p for p, _ in pairs], [r for _, r in pairs]).statistic
    assert position_bias(pairs) == pytest.approx(expected)
    assert position_bias([(1, 1), (2, 1)]) is None
    assert position_bias([]) is None


@FAST
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(1, 9)), min_size=2, max_size=9))
def test_position_bias_matches_scipy(pairs):
    positions, ranks = [p for p, _ in pairs], [r for _, r in pairs]
    if len(set(positions)) < 2 or len(set(ranks)) < 2:
        assert position_bias(pairs) is None
    else:
        assert position_bias(pairs) == pytest.approx(stats.spearmanr(positions, ranks).statistic)


def noisy_tasks(n: int, seed: int) -> list[dict]:
    """Return n tasks of two annotators; the second swaps one adjacent pair 30% of the time."""
    rng = random.Random(seed)
    tasks = []
    for _ in range(n):
        first = {c: c for c in range(1, 5)}
        second = dict(first)
        if rng.random() < 0.3:
            i = rng.randint(1, 3)
            second[i], second[i + 1] = second[i + 1], second[i]
        tasks.append({"a": first, "b": second})
    return tasks


def test_bootstrap_ci_contains_the_estimate_of_a_large_consistent_sample():
    tasks = noisy_tasks(2000, seed=1)
    estimate = project_agreement(tasks)
    low, high = bootstrap_ci(tasks, PROJECT_AGREEMENT)
    assert low < estimate < high
    assert high - low < 0.02


def test_bootstrap_ci_is_deterministic_for_a_seed():
    tasks = noisy_tasks(300, seed=2)
    assert bootstrap_ci(tasks, PROJECT_AGREEMENT, seed=7) == bootstrap_ci(
        tasks, PROJECT_AGREEMENT, seed=7
    )
    assert bootstrap_ci(tasks, PROJECT_AGREEMENT, seed=7) != bootstrap_ci(
        tasks, PROJECT_AGREEMENT, seed=8
    )


def test_bootstrap_ci_of_a_ratio_statistic_matches_running_it_per_resample():
    tasks = noisy_tasks(150, seed=3)
    fast = bootstrap_ci(tasks, PROJECT_AGREEMENT, n_resamples=300, seed=5)
    slow = bootstrap_ci(tasks, project_agreement, n_resamples=300, seed=5)
    assert fast == pytest.approx(slow)
    statistic = annotator_agreement_statistic("b")
    assert bootstrap_ci(tasks, statistic, n_resamples=200) == pytest.approx(
        bootstrap_ci(tasks, lambda ts: annotator_agreement(ts, "b"), n_resamples=200)
    )


def test_bootstrap_ci_over_ten_thousand_tasks_stays_fast():
    scores = list(np.random.default_rng(0).random(10_000))
    low, high = bootstrap_ci(scores, GOLD_ACCURACY, n_resamples=1000)
    assert low < gold_accuracy(scores) < high


def test_bootstrap_ci_is_none_without_tasks_or_values():
    assert bootstrap_ci([], PROJECT_AGREEMENT) is None
    all_tied = [{"a": {1: 1, 2: 1}, "b": {1: 1, 2: 1}}] * 5
    assert bootstrap_ci(all_tied, PROJECT_AGREEMENT) is None
    assert bootstrap_ci(all_tied, RatioStatistic(lambda task: (0, 0))) is None
