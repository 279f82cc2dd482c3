"""Pairs, merges, rows, hashing and cards of dataset exports (pure: no Django, no model)."""

import json
from collections import Counter
from math import comb
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from training.datasets import formats
from training.datasets.card import dataset_card, size_category
from training.datasets.formats import (
    MERGES,
    PAIR_POLICIES,
    ContentHash,
    Pair,
    as_messages,
    canonical_line,
    check_columns,
    consensus_ranking,
    is_chat,
    pairs_from_ranking,
    preference_row,
    prompt_row,
    rankings_row,
    sft_row,
    task_pairs,
)

GOLDEN = Path(__file__).parent / "golden"
FAST = settings(max_examples=80, deadline=None)


def dense(values: list[int]) -> list[int]:
    """Return values as dense ranks (1, 1, 2 ...), keeping their order and ties."""
    place = {v: i for i, v in enumerate(sorted(set(values)), start=1)}
    return [place[v] for v in values]


dense_rankings = st.lists(st.integers(1, 5), min_size=1, max_size=8).map(
    lambda values: {cid: rank for cid, rank in enumerate(dense(values), start=100)}
)
strict_rankings = (
    st.integers(1, 8)
    .flatmap(lambda k: st.permutations(range(1, k + 1)))
    .map(lambda ranks: {cid: rank for cid, rank in enumerate(ranks, start=100)})
)


@st.composite
def tasks(draw):
    """Draw (rankings, ratings) of 1-4 annotators over up to 6 completions."""
    k = draw(st.integers(1, 6))
    completions = list(range(200, 200 + k))
    rankings, ratings = {}, {}
    for annotator in draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=4,
                                   unique=True)):
        ranked = draw(st.lists(st.sampled_from(completions), min_size=1, unique=True))
        levels = dense(draw(st.lists(st.integers(1, 4), min_size=len(ranked),
                                     max_size=len(ranked))))
        rankings[annotator] = dict(zip(ranked, levels, strict=True))
        ratings[annotator] = {
            cid: rating for cid in ranked
            if (rating := draw(st.none() | st.integers(1, 7))) is not None
        }
    return rankings, ratings


# Properties


@FAST
@given(strict_rankings)
def test_a_strict_ranking_gives_every_pair_or_the_adjacent_ones(ranks):
    k = len(ranks)
    assert len(pairs_from_ranking(ranks, policy="all")) == comb(k, 2)
    assert len(pairs_from_ranking(ranks, policy="adjacent")) == k - 1


@FAST
@given(dense_rankings)
def test_ties_remove_exactly_their_pairs(ranks):
    groups = Counter(ranks.values())
    expected = comb(len(ranks), 2) - sum(comb(g, 2) for g in groups.values())
    assert len(pairs_from_ranking(ranks, policy="all")) == expected
    levels = [groups[level] for level in sorted(groups)]
    adjacent = sum(a * b for a, b in zip(levels, levels[1:], strict=False))
    assert len(pairs_from_ranking(ranks, policy="adjacent")) == adjacent


@FAST
@given(dense_rankings, st.sampled_from(PAIR_POLICIES))
def test_every_chosen_response_has_the_better_rank(ranks, policy):
    pairs = pairs_from_ranking(ranks, policy=policy)
    assert all(ranks[p.chosen] < ranks[p.rejected] for p in pairs)
    assert len(set(pairs)) == len(pairs)


@FAST
@given(dense_rankings, st.integers(1, 4))
def test_the_consensus_of_identical_rankings_is_that_ranking(ranks, annotators):
    assert consensus_ranking({f"a{i}": dict(ranks) for i in range(annotators)}) == ranks


@FAST
@given(dense_rankings, st.sampled_from(PAIR_POLICIES))
def test_a_majority_of_one_annotator_gives_that_annotators_pairs(ranks, policy):
    own = task_pairs({"bob": ranks}, merge="per_annotator", policy=policy)
    majority = task_pairs({"bob": ranks}, merge="majority", policy=policy)
    assert [pair for _, pair in majority] == [pair for _, pair in own]
    assert {annotator for annotator, _ in own} <= {"bob"}
    assert {annotator for annotator, _ in majority} <= {None}


@FAST
@given(tasks(), st.sampled_from(MERGES), st.sampled_from(PAIR_POLICIES))
def test_a_margin_is_never_negative(task, merge, policy):
    rankings, ratings = task
    for _, pair in task_pairs(rankings, merge=merge, policy=policy, ratings=ratings,
                              margin=True):
        assert pair.margin is None or pair.margin >= 0
        if merge == "majority":
            assert 0 < pair.margin <= 1


@FAST
@given(tasks(), st.sampled_from(MERGES), st.sampled_from(PAIR_POLICIES), st.randoms())
def test_the_order_of_the_input_does_not_change_the_pairs(task, merge, policy, rnd):
    rankings, ratings = task

    def shuffled(mapping):
        items = list(mapping.items())
        rnd.shuffle(items)
        return dict(items)

    again = shuffled({a: shuffled(r) for a, r in rankings.items()})
    expected = task_pairs(rankings, merge=merge, policy=policy, ratings=ratings, margin=True)
    assert task_pairs(again, merge=merge, policy=policy, ratings=ratings,
                      margin=True) == expected


@FAST
@given(tasks(), st.sampled_from(PAIR_POLICIES))
def test_merged_pairs_never_contradict_each_other(task, policy):
    rankings, _ = task
    for merge in ("consensus", "majority"):
        pairs = {(p.chosen, p.rejected) for _, p in task_pairs(rankings, merge=merge,
                                                                policy=policy)}
        assert not any((rejected, chosen) in pairs for chosen, rejected in pairs)


# Pairs and merges


def test_a_margin_needs_both_ratings():
    ranks = {1: 1, 2: 2, 3: 3}
    pairs = pairs_from_ranking(ranks, ratings={1: 7, 2: 3}, margin=True)
    assert pairs == [Pair(1, 2, 4.0), Pair(1, 3, None), Pair(2, 3, None)]
    assert all(p.margin is None for p in pairs_from_ranking(ranks, ratings={1: 7, 2: 3}))


def test_a_rating_against_the_ranking_gives_a_zero_margin():
    assert pairs_from_ranking({1: 1, 2: 2}, ratings={1: 2, 2: 6}, margin=True) == [
        Pair(1, 2, 0.0)]


def test_an_even_vote_gives_no_majority_pair():
    rankings = {"ann": {1: 1, 2: 2}, "bob": {1: 2, 2: 1}, "cat": {1: 1, 2: 1}}
    assert task_pairs(rankings, merge="majority") == []


def test_a_majority_counts_ties_among_the_voters():
    rankings = {"ann": {1: 1, 2: 2}, "bob": {1: 1, 2: 1}, "cat": {1: 1}}
    assert task_pairs(rankings, merge="majority", margin=True) == [(None, Pair(1, 2, 0.5))]


def test_consensus_margins_come_from_mean_ratings():
    rankings = {"ann": {1: 1, 2: 2}, "bob": {1: 1, 2: 2}}
    ratings = {"ann": {1: 7, 2: 2}, "bob": {1: 6}}
    assert task_pairs(rankings, merge="consensus", ratings=ratings, margin=True) == [
        (None, Pair(1, 2, 4.5))]


@pytest.mark.parametrize("kwargs", [{"policy": "best"}, {"merge": "mean"}])
def test_it_rejects_an_unknown_policy_or_merge(kwargs):
    with pytest.raises(ValueError, match="must be one of"):
        task_pairs({"ann": {1: 1, 2: 2}}, **kwargs)


@pytest.mark.parametrize("rank", [0, 1.5, True, "1", None])
def test_it_rejects_a_rank_that_is_not_a_whole_number_from_1(rank):
    with pytest.raises(ValueError, match="whole number"):
        pairs_from_ranking({1: 1, 2: rank})


# Prompts and rows


def test_it_tells_a_chat_from_a_plain_prompt():
    assert is_chat([{"role": "user", "content": "hi"}])
    assert not is_chat("hi")
    assert not is_chat([])
    assert not is_chat([{"role": "user"}])
    assert not is_chat(["hi"])


def test_as_messages_wraps_a_plain_prompt_and_keeps_role_and_content_only():
    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
    chat = [{"role": "user", "content": "hi", "name": "dana"}]
    assert as_messages(chat) == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="messages"):
        as_messages([{"role": "user"}])


def test_it_refuses_a_chat_in_a_standard_file():
    with pytest.raises(ValueError, match="conversational"):
        sft_row([{"role": "user", "content": "hi"}], "hello", conversational=False)


@pytest.mark.parametrize("column", ["prompt", "margin", "tools", "input_ids", "messages"])
def test_an_extra_column_cannot_shadow_a_column_trl_reads(column):
    with pytest.raises(ValueError, match="clashes"):
        preference_row("p", "a", "b", conversational=False, extra={column: 1})


@pytest.mark.parametrize("margin", [-1.0, float("nan"), True, "1"])
def test_it_rejects_a_margin_that_is_not_a_number_from_0(margin):
    with pytest.raises(ValueError, match="margin"):
        preference_row("p", "a", "b", conversational=False, margin=margin)


def test_a_whole_margin_is_written_as_a_float():
    row = preference_row("p", "a", "b", conversational=False, margin=2)
    assert canonical_line(row) == b'{"chosen":"a","margin":2.0,"prompt":"p","rejected":"b"}\n'


def test_a_rankings_row_refuses_a_completion_it_does_not_hold():
    with pytest.raises(ValueError, match="not in responses"):
        rankings_row(task_id=1, prompt="p", responses=[(1, "a"), (2, "b")],
                     annotators=[{"annotator": "ann", "ranks": {1: 1, 3: 2}}],
                     consensus={1: 1}, agreement=None, conversational=False)


def test_check_columns_finds_a_file_mixing_plain_and_chat_prompts():
    rows = [sft_row("hi", "yo", conversational=False),
            sft_row([{"role": "user", "content": "hi"}], "yo", conversational=True)]
    with pytest.raises(ValueError, match="column 'prompt' is a list in row 1"):
        check_columns(rows)


def test_check_columns_finds_a_margin_missing_from_some_rows():
    rows = [preference_row("p", "a", "b", conversational=False, margin=1.0),
            preference_row("p", "a", "b", conversational=False)]
    with pytest.raises(ValueError, match="row 1 has columns"):
        check_columns(rows)


def test_check_columns_accepts_nulls_and_mixed_numbers():
    check_columns([{"a": 1, "b": None}, {"a": 1.5, "b": "x"}, {"a": None, "b": "y"}])


# Golden files: hand-written, compared byte for byte.

FRANCE = "What is the capital of France?"
FRANCE_TEXTS = {11: "Paris.", 12: "Lyon.", 13: "Marseille — no.", 14: "I don't know."}
FRANCE_RANKS = {14: 3, 12: 2, 11: 1, 13: 2}
FRANCE_RATINGS = {11: 6, 12: 5, 13: 7, 14: 1}

SUM = "2+2=?"
SUM_TEXTS = {21: "4", 22: "5", 23: "four"}
# Out of id order on purpose: exports must not depend on it.
SUM_RANKINGS = {
    "cat": {21: 1, 22: 2, 23: 2},
    "ann": {21: 1, 22: 3, 23: 2},
    "bob": {21: 2, 22: 3, 23: 1},
}
SUM_RATINGS = {
    "ann": {21: 7, 22: 1, 23: 6},
    "bob": {21: 6, 22: 2, 23: 7},
    "cat": {21: 5, 22: 3, 23: 2},
}
SUM_FLAGS = {"bob": {22: ["incorrect"]}, "cat": {22: ["incorrect", "bad_format"]}}

HAIKU = "Soft rain on the roof,\nthe gutters hum a low song,\nsleep comes easily."
THANKS = [{"role": "system", "content": "Answer in Chinese."},
          {"role": "user", "content": "Say thank you."}]


def preference_rows(prompt, texts, samples, *, task_id, annotator_column):
    rows = []
    for annotator, pair in samples:
        extra = {"task_id": task_id, "chosen_id": pair.chosen, "rejected_id": pair.rejected}
        if annotator_column:
            extra["annotator"] = annotator
        rows.append(preference_row(prompt, texts[pair.chosen], texts[pair.rejected],
                                   conversational=False, margin=pair.margin, extra=extra))
    return rows


def france(policy):
    pairs = pairs_from_ranking(FRANCE_RANKS, policy=policy, ratings=FRANCE_RATINGS,
                               margin=True)
    return preference_rows(FRANCE, FRANCE_TEXTS, [(None, p) for p in pairs], task_id=1,
                           annotator_column=False)


def merged(merge, policy, margin):
    samples = task_pairs(SUM_RANKINGS, merge=merge, policy=policy, ratings=SUM_RATINGS,
                         margin=margin)
    return preference_rows(SUM, SUM_TEXTS, samples, task_id=2, annotator_column=True)


def preference_chat():
    hello = [{"role": "system", "content": "Answer in Chinese."},
             {"role": "user", "content": "Say hello."}]
    return [
        preference_row(hello, "你好！", "Hello!", conversational=True, margin=2.0,
                       extra={"task_id": 3}),
        preference_row("Say goodbye.", "再见！", "Bye.", conversational=True, margin=0,
                       extra={"task_id": 8}),
    ]


def sft(conversational):
    rows = [sft_row("Write a haiku about rain.", HAIKU, conversational=conversational,
                    extra={"task_id": 4, "category": "generation"})]
    if conversational:
        return [sft_row(THANKS, "谢谢！", conversational=True,
                        extra={"task_id": 7, "category": "chat"}), *rows]
    return [*rows, sft_row("Translate to French: cat", " chat", conversational=False,
                           extra={"task_id": 6, "category": "rewrite"})]


def rankings():
    annotators = [
        {"annotator": a, "ranks": SUM_RANKINGS[a], "ratings": SUM_RATINGS[a],
         "flags": SUM_FLAGS.get(a, {})}
        for a in SUM_RANKINGS
    ]
    joke = [{"role": "user", "content": "Tell me a joke."},
            {"role": "assistant", "content": "Why?"},
            {"role": "user", "content": "Any joke."}]
    return [
        rankings_row(task_id=2, prompt=SUM, responses=list(SUM_TEXTS.items()),
                     annotators=annotators, consensus=consensus_ranking(SUM_RANKINGS),
                     agreement=0.5, conversational=True, extra={"category": "math"}),
        rankings_row(task_id=5, prompt=joke, responses=[(51, "A pun."), (52, "No.")],
                     annotators=[{"annotator": "dan", "ranks": {52: 1}}], consensus={52: 1},
                     agreement=None, conversational=True, extra={"category": "chat"}),
    ]


def prompts():
    return [
        prompt_row(prompt_id=1, prompt="Name a prime.", category="open_qa", split="train",
                   conversational=True),
        prompt_row(prompt_id=2, prompt=[{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Why is the sky blue?"}],
                   category=None, split="train", conversational=True),
    ]


GOLDEN_CASES = {
    "preference_all_margin": lambda: france("all"),
    "preference_adjacent_margin": lambda: france("adjacent"),
    "merge_per_annotator_all": lambda: merged("per_annotator", "all", True),
    "merge_per_annotator_adjacent": lambda: merged("per_annotator", "adjacent", False),
    "merge_consensus_all": lambda: merged("consensus", "all", True),
    "merge_consensus_adjacent": lambda: merged("consensus", "adjacent", True),
    "merge_majority_all": lambda: merged("majority", "all", True),
    "merge_majority_adjacent": lambda: merged("majority", "adjacent", False),
    "preference_chat": preference_chat,
    "sft_plain": lambda: sft(False),
    "sft_chat": lambda: sft(True),
    "rankings": rankings,
    "prompts": prompts,
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_rows_match_the_golden_file(name):
    rows = GOLDEN_CASES[name]()
    check_columns(rows)
    assert b"".join(map(canonical_line, rows)) == (GOLDEN / f"{name}.jsonl").read_bytes()


def test_every_golden_file_is_checked():
    assert {p.stem for p in GOLDEN.glob("*.jsonl")} == set(GOLDEN_CASES)


# Hashing


def test_a_canonical_line_is_compact_sorted_utf8_json():
    assert canonical_line({"b": [1, 2], "a": "你好"}) == '{"a":"你好","b":[1,2]}\n'.encode()
    # The same bytes as the standard library's canonical form (orjson writes them faster).
    row = {"z": 0.1, "a": [{"y": None, "x": "é\n"}], "m": 12345678901234}
    assert canonical_line(row) == (json.dumps(row, sort_keys=True, ensure_ascii=False,
                                              separators=(",", ":")) + "\n").encode()
    # JSON has no NaN: the row builders refuse it before a line is written.
    with pytest.raises(ValueError):
        preference_row("p", "a", "b", margin=float("nan"), conversational=False)
    with pytest.raises(ValueError):
        preference_row("p", "a", "b", conversational=False, extra={"agreement": float("inf")})


def test_batched_preference_rows_equal_one_row_at_a_time():
    pairs = [("a", "b", 1.0, {"annotator_id": 1}), ("c", "d", None, {"annotator_id": 2})]
    for conversational in (False, True):
        batched = list(formats.preference_rows("p", pairs, conversational=conversational,
                                               extra={"task_id": 7}))
        one_by_one = [preference_row("p", c, r, margin=m, conversational=conversational,
                                     extra={"task_id": 7} | more) for c, r, m, more in pairs]
        assert batched == one_by_one


def hashed(splits: dict[str, list[dict]]) -> ContentHash:
    content = ContentHash()
    for split, rows in splits.items():
        for row in rows:
            content.update(row, split=split)
    return content


def test_the_same_rows_give_the_same_hash():
    rows = rankings()
    assert hashed({"train": rows}).hexdigest() == hashed({"train": rankings()}).hexdigest()
    assert hashed({"train": rows}).hexdigest("train") == hashed(
        {"train": rows}).hexdigest("train")


def test_one_change_gives_another_hash():
    rows = rankings()
    changed = rankings()
    changed[1]["annotators"][0]["ranks"][0] = 2
    assert hashed({"train": rows}).hexdigest() != hashed({"train": changed}).hexdigest()
    assert hashed({"train": rows}).hexdigest() != hashed({"train": rows[::-1]}).hexdigest()
    assert hashed({"train": rows}).hexdigest() != hashed({"test": rows}).hexdigest()


def test_the_overall_hash_does_not_depend_on_how_splits_interleave():
    train, test = sft(True), sft(False)
    apart = hashed({"train": train, "test": test})
    mixed = ContentHash()
    for a, b in zip(train, test, strict=True):
        mixed.update(b, split="test")
        mixed.update(a, split="train")
    assert mixed.hexdigest() == apart.hexdigest()
    assert mixed.hexdigest("test") == apart.hexdigest("test")
    assert mixed.splits == ["test", "train"] and mixed.rows == {"test": 2, "train": 2}
    assert apart.hexdigest("train") != apart.hexdigest("test")


def test_update_returns_the_bytes_to_write():
    row = prompts()[0]
    assert ContentHash().update(row, split="train") == canonical_line(row)


# Cards


def card(**overrides):
    rows = preference_chat()
    arguments = dict(
        name="Helpful | pairs", kind="preference_pairs",
        splits={"train": rows, "test": rows[:1]},
        counts_by_category={"train": {"chat": 2}, "test": {"chat": 1, "open_qa": 0}},
        filters={"min_agreement": 0.6, "exclude_flags": ["unsafe"]},
        merge="majority", pair_policy="adjacent",
        agreement={"pairwise": 0.74, "pairwise_ci": [0.7, 0.78]},
        license="cc-by-4.0", content_hash="ab" * 32, created_at="2026-01-02T03:04:05+00:00",
        files={"train": {"jsonl": "train.jsonl", "parquet": "train.parquet"},
               "test": {"jsonl": "test.jsonl", "parquet": "test.parquet"}},
    )
    return dataset_card(**{**arguments, **overrides})


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_a_card_carries_the_hub_metadata():
    metadata = front_matter(card())
    assert metadata["license"] == "cc-by-4.0"
    assert metadata["pretty_name"] == "Helpful | pairs"
    assert metadata["task_categories"] == ["text-classification"]
    assert metadata["size_categories"] == ["n<1K"]
    assert metadata["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "train.jsonl"}, {"split": "test", "path": "test.jsonl"}]}]


def test_a_card_says_how_the_rows_were_made():
    text = card()
    for heading in ("Summary", "How it was filtered", "Merge and pair policy", "Counts",
                    "Agreement", "Loading", "Integrity"):
        assert f"\n## {heading}\n" in text
    assert "- `min_agreement`: 0.600" in text
    assert "Merge `majority`" in text and "Pairs `adjacent`" in text
    assert "| chat | 2 | 1 | 3 |" in text and "| open_qa | 0 | 0 | 0 |" in text
    assert "| total | 3 |" in text
    assert "- pairwise_ci: [0.700, 0.780]" in text
    assert "ab" * 32 in text and "`margin`" in text and "conversational" in text


def test_a_card_reads_parquet_when_not_every_split_has_json_lines():
    files = {"train": {"parquet": "train.parquet"}, "test": {"parquet": "test.parquet"}}
    assert front_matter(card(files=files))["configs"][0]["data_files"][0]["path"] == (
        "train.parquet")
    with pytest.raises(ValueError, match="jsonl or a parquet"):
        card(files={"train": {"csv": "train.csv"}})


def test_a_card_without_filters_merge_or_agreement_says_so():
    text = card(kind="sft", splits={"train": sft(False)}, files={"train": "train.jsonl"},
                counts_by_category={}, filters={}, merge=None, pair_policy=None,
                agreement=None)
    assert "No filter" in text and "Not applicable" in text and "Not computed" in text
    assert "standard: plain text" in text and "SFTTrainer" in text


def test_a_card_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        card(kind="dpo")


@pytest.mark.parametrize(("rows", "label"), [
    (0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (123_456, "100K<n<1M"),
    (5 * 10**9, "n>1B"),
])
def test_size_categories_follow_the_hub(rows, label):
    assert size_category(rows) == label

