"""Exported rows load with datasets (JSON Lines and Parquet) and train TRL 1.16 as they are."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from training.datasets.card import dataset_card
from training.datasets.formats import (
    ContentHash,
    check_columns,
    pairs_from_ranking,
    preference_row,
    prompt_row,
    rankings_row,
    sft_row,
)

CHAT = [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"}]
PLAIN = "Question: what is the capital of France?\nAnswer:"
TEXTS = {1: " Paris.", 2: " Lyon, I think.", 3: " Marseille — no idea.", 4: " 巴黎。"}
RANKS = {1: 1, 4: 1, 2: 2, 3: 3}
RATINGS = {1: 7, 2: 4, 3: 1, 4: 6}


def sft_rows(conversational: bool) -> list[dict]:
    prompts = [CHAT, PLAIN] if conversational else [PLAIN, "Name a prime number:"]
    return [
        sft_row(prompts[i % 2], TEXTS[cid], conversational=conversational,
                extra={"task_id": i, "completion_id": cid, "category": "open_qa"})
        for i, cid in enumerate(TEXTS)
    ]


def preference_rows(conversational: bool) -> list[dict]:
    prompt = CHAT if conversational else PLAIN
    return [
        preference_row(prompt, TEXTS[p.chosen], TEXTS[p.rejected], conversational=conversational,
                       margin=p.margin,
                       extra={"task_id": 7, "chosen_id": p.chosen, "rejected_id": p.rejected})
        for p in pairs_from_ranking(RANKS, ratings=RATINGS, margin=True)
    ]


def rankings_rows() -> list[dict]:
    annotators = [
        {"annotator": "bob", "ranks": RANKS, "ratings": RATINGS, "flags": {3: ["incorrect"]}},
        {"annotator": "dana", "ranks": {1: 1, 2: 2}},
    ]
    return [
        rankings_row(task_id=7, prompt=CHAT, responses=list(TEXTS.items()),
                     annotators=annotators, consensus=RANKS, agreement=1.0,
                     conversational=True),
        rankings_row(task_id=8, prompt=PLAIN, responses=[(9, "A."), (10, "B.")],
                     annotators=[{"annotator": "dana", "ranks": {9: 1, 10: 1}}],
                     consensus={9: 1, 10: 1}, agreement=None, conversational=True),
    ]


def prompt_rows() -> list[dict]:
    return [prompt_row(prompt_id=1, prompt=CHAT, category="open_qa", split="train",
                       conversational=True),
            prompt_row(prompt_id=2, prompt=PLAIN, category=None, split="train",
                       conversational=True)]


def write(path, rows: list[dict]):
    """Write rows as JSON Lines or Parquet, by the path's suffix, and return the path."""
    check_columns(rows)
    if path.suffix == ".jsonl":
        content = ContentHash()
        path.write_bytes(b"".join(content.update(row, split="train") for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def load(path, tmp_path):
    builder = "json" if path.suffix == ".jsonl" else "parquet"
    return load_dataset(builder, data_files=str(path), split="train",
                        cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("rows", [
    pytest.param(sft_rows(False), id="sft-plain"),
    pytest.param(sft_rows(True), id="sft-chat"),
    pytest.param(preference_rows(False), id="preference-plain"),
    pytest.param(preference_rows(True), id="preference-chat"),
    pytest.param(rankings_rows(), id="rankings"),
    pytest.param(prompt_rows(), id="prompts"),
])
def test_rows_load_back_unchanged(tmp_path, rows, suffix):
    dataset = load(write(tmp_path / f"rows{suffix}", rows), tmp_path)
    assert list(dataset) == rows


def test_datasets_loads_a_folder_through_its_card(tmp_path):
    # File names datasets would not map to splits by itself: only the card's configs do.
    splits = {"train": preference_rows(True), "validation": preference_rows(True)[:2]}
    files = {split: f"france-{split[:3]}.jsonl" for split in splits}
    content = ContentHash()
    for split, rows in splits.items():
        (tmp_path / files[split]).write_bytes(
            b"".join(content.update(row, split=split) for row in rows))
    (tmp_path / "README.md").write_text(dataset_card(
        name="France", kind="preference_pairs", splits=splits,
        counts_by_category={"train": {"open_qa": 5}, "validation": {"open_qa": 2}}, filters={},
        merge="per_annotator", pair_policy="all", agreement=None, license="other",
        content_hash=content.hexdigest(), created_at="2026-01-02T03:04:05+00:00",
        files=files,
    ), encoding="utf-8")
    dataset = load_dataset(str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert {split: list(dataset[split]) for split in dataset} == splits


def common_args(tmp_path, remove_unused_columns: bool) -> dict:
    return dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2,
                learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[],
                use_cpu=True, bf16=False, disable_tqdm=True, seed=0,
                remove_unused_columns=remove_unused_columns)


# Extra columns (ids, category) ride along: TRL drops them before batching by default,
# and its collators ignore them when remove_unused_columns is off.
TRAINING_CASES = [
    pytest.param(".jsonl", False, True, id="plain-jsonl"),
    pytest.param(".parquet", False, False, id="plain-parquet-keep-columns"),
    pytest.param(".jsonl", True, False, id="chat-jsonl-keep-columns"),
    pytest.param(".parquet", True, True, id="chat-parquet"),
]


@pytest.mark.parametrize(("suffix", "conversational", "remove_unused_columns"), TRAINING_CASES)
def test_sft_trainer_trains_on_the_completions(tmp_path, tiny_model, suffix,
                                               conversational, remove_unused_columns):
    dataset = load(write(tmp_path / f"sft{suffix}", sft_rows(conversational)), tmp_path)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=SFTConfig(max_length=128, **common_args(tmp_path, remove_unused_columns)),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_model),
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert all("loss" in entry for entry in trainer.state.log_history[:2])
    # Completion-only loss: the prompt's tokens are masked out, the completion's are not.
    labels = trainer.train_dataset[0]["labels"]
    assert labels[0] == -100 and labels[-1] != -100


@pytest.mark.parametrize(("suffix", "conversational", "remove_unused_columns"), TRAINING_CASES)
def test_reward_trainer_trains_on_the_pairs_with_margins(tmp_path, tiny_model, suffix,
                                                         conversational, remove_unused_columns):
    dataset = load(write(tmp_path / f"pairs{suffix}", preference_rows(conversational)),
                   tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    before = model.score.weight.detach().clone()
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(max_length=128, **common_args(tmp_path, remove_unused_columns)),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    assert "margin" in trainer.train_dataset.column_names
    trainer.train()
    assert trainer.state.global_step == 2
    assert all("loss" in entry for entry in trainer.state.log_history[:2])
    assert not model.score.weight.detach().equal(before)
