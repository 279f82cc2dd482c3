"""The K-way reward trainer: data, collator, shared-prompt form, training, saving, resuming.

Synthetic rankings where a response's quality is how often it says "good", so a tiny
model (2 layers, 64 wide) learns the order in a few dozen steps.
"""

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)

from modelhub.ml.tiny import TRAINING_RECORD
from training.datasets.formats import rankings_row
from training.losses import pair_matrix
from training.reward_config import RewardConfig
from training.reward_trainer import (
    BIAS_KEY,
    CONFIG_FILE,
    RankedElement,
    RankingCollator,
    _rewards,
    bias_pairs,
    load_rankings,
    score_responses,
    shared_prompt_matches,
    train_reward,
)

FILLER = "the a of to and in is it that for on with as was this".split()


def response(rng: random.Random, good: int, words: int = 10) -> str:
    text = [rng.choice(FILLER) for _ in range(words - good)] + ["good"] * good
    rng.shuffle(text)
    return " " + " ".join(text)


def rows(n: int, *, seed: int, chat: bool = False, ks=range(2, 10), ties: bool = False,
         start: int = 0) -> list[dict]:
    """Return rankings rows ranked by the count of "good" (more is better), K drawn from ks."""
    rng = random.Random(seed)
    out = []
    for task in range(start, start + n):
        k = rng.choice(list(ks))
        goods = [rng.randrange(6) for _ in range(k)] if ties else rng.sample(range(10), k)
        levels = sorted(set(goods), reverse=True)
        ranks = {i: levels.index(g) + 1 for i, g in enumerate(goods)}
        prompt = ([{"role": "system", "content": "Be kind."},
                   {"role": "user", "content": f"Question {task}?"}]
                  if chat else f"Question {task}: say it.")
        out.append(rankings_row(
            task_id=task, prompt=prompt,
            responses=[(i, response(rng, g)) for i, g in enumerate(goods)],
            annotators=[{"annotator": "ann", "ranks": ranks,
                         "ratings": {i: 1 + min(g, 6) for i, g in enumerate(goods)}}],
            consensus=ranks, agreement=None, conversational=chat))
    return out


def config(tiny_model, tmp_path, **overrides) -> RewardConfig:
    values = dict(model_path=str(tiny_model), output_dir=str(tmp_path / "rm"), max_length=64,
                  per_device_prompts=8, learning_rate=1e-3, lr_scheduler_type="constant",
                  num_train_epochs=1.0, logging_steps=2, save_steps=1000, seed=0)
    values.update(overrides)
    return RewardConfig(**values)


class Logs(TrainerCallback):
    def __init__(self):
        self.entries = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.entries.append({"step": state.global_step, **(logs or {})})


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """Train once on plain prompts (K from 2 to 9, some ties) with periodic evaluation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("trained")
        logs = Logs()
        cfg = config(tiny_model, out, num_train_epochs=3.0, eval_steps=6, save_steps=12)
        train = rows(48, seed=1) + rows(8, seed=2, ties=True, start=100)
        metrics = train_reward(cfg, train, rows(24, seed=3, start=200), callbacks=[logs])
        return cfg, metrics, logs.entries
    finally:
        torch.set_num_threads(threads)


# -- Training ---------------------------------------------------------------------------------

def test_it_logs_a_falling_loss_and_train_accuracy(trained):
    _, metrics, logs = trained
    losses = [e["loss"] for e in logs if "loss" in e]
    assert len(losses) >= 5
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    assert all(0 <= e["accuracy"] <= 1 for e in logs if "loss" in e)
    assert metrics["global_step"] == 21  # 56 elements (none all tied) / 8, x 3 epochs


def test_it_reports_held_out_accuracy_at_every_evaluation(trained):
    _, metrics, logs = trained
    evaluations = [e for e in logs if "eval_accuracy" in e]
    assert [e["step"] for e in evaluations] == [6, 12, 18, 21]  # every 6 steps, and the end
    assert all("eval_loss" in e and e["eval_num_pairs"] > 0 for e in evaluations)
    assert metrics["eval_accuracy"] == evaluations[-1]["eval_accuracy"]
    # Learnable: well above chance, and better than at the first evaluation or equal.
    assert metrics["eval_accuracy"] > 0.7
    assert metrics["eval_accuracy"] >= evaluations[0]["eval_accuracy"] - 0.05


def test_it_changes_the_parameters(trained, tiny_model):
    cfg, _, _ = trained
    before = AutoModelForCausalLM.from_pretrained(tiny_model).transformer.h[0].attn.c_attn.weight
    after = AutoModelForSequenceClassification.from_pretrained(
        cfg.output_dir).transformer.h[0].attn.c_attn.weight
    assert not torch.allclose(before, after)


def test_it_saves_a_loadable_reward_model_with_its_bias(trained):
    cfg, metrics, logs = trained
    model = AutoModelForSequenceClassification.from_pretrained(cfg.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(cfg.output_dir)
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert getattr(model.config, BIAS_KEY) == pytest.approx(metrics["reward_bias"])
    assert getattr(model.config, f"{BIAS_KEY}_source") == "best_ranked"
    # The bias is the mean reward of the best-ranked training responses (no demonstrations).
    elements = load_rankings(rows(48, seed=1) + rows(8, seed=2, ties=True, start=100))
    pairs, _ = bias_pairs(elements, None, limit=cfg.bias_max_responses, seed=cfg.seed)
    scores = score_responses(model, tokenizer, pairs, max_length=cfg.max_length)
    assert scores.mean().item() == pytest.approx(metrics["reward_bias"], abs=1e-4)
    # A model folder, not a checkpoint: no pickled training arguments, no optimizer.
    assert not (Path(cfg.output_dir) / "training_args.bin").exists()
    record = json.loads((Path(cfg.output_dir) / TRAINING_RECORD).read_text())
    assert record["kind"] == "reward" and record["base_model"] == cfg.model_path
    assert record["step"] == 21 and record["config"] == cfg.to_dict()
    assert record["best_metric"] == max(e["eval_accuracy"] for e in logs if "eval_accuracy" in e)
    # Checkpoints describe themselves: the run's config next to the trainer's state.
    checkpoint = cfg.checkpoint_dir / "checkpoint-12"
    assert json.loads((checkpoint / CONFIG_FILE).read_text()) == cfg.to_dict()
    assert (checkpoint / "trainer_state.json").exists()


def test_each_response_goes_through_the_model_once_per_step(tiny_model, tmp_path):
    train = rows(6, seed=4)
    total = sum(len(r["responses"]) for r in train)
    seen = []

    def watch(model):
        def hook(module, inputs, output):
            if module.training:
                seen.append(inputs[0].shape[0])
        model.score.register_forward_hook(hook)

    for share in (False, True):
        seen.clear()
        train_reward(config(tiny_model, tmp_path / str(share), per_device_prompts=6, max_steps=2,
                            share_prompt=share), train, model_init=watch)
        assert seen == [total, total]  # sum(K) scalar rewards per step, not 2 x C(K, 2)


def test_it_trains_on_conversational_prompts_with_margins_and_demonstrations(tiny_model,
                                                                            tmp_path):
    demos = [{"prompt": [{"role": "user", "content": "Hi?"}],
              "completion": [{"role": "assistant", "content": " good good good"}]},
             ("Plain question:", " good good")]
    cfg = config(tiny_model, tmp_path, max_steps=4, margin=True, ranking="per_annotator")
    metrics = train_reward(cfg, rows(16, seed=5, chat=True), demonstrations=demos)
    assert metrics["global_step"] == 4 and metrics["reward_bias_source"] == "demonstrations"
    model = AutoModelForSequenceClassification.from_pretrained(cfg.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(cfg.output_dir)
    scores = score_responses(model, tokenizer, [(d["prompt"], d["completion"][0]["content"])
                                                if isinstance(d, dict) else d for d in demos],
                             max_length=cfg.max_length)
    assert getattr(model.config, BIAS_KEY) == pytest.approx(scores.mean().item(), abs=1e-4)


def test_it_resumes_from_a_checkpoint(tiny_model, tmp_path):
    train = rows(32, seed=6)
    first = train_reward(config(tiny_model, tmp_path, max_steps=4, save_steps=2), train)
    assert first["global_step"] == 4
    assert (tmp_path / "rm" / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists()
    again = train_reward(config(tiny_model, tmp_path, max_steps=6, save_steps=2), train,
                         resume_from_checkpoint=True)
    assert again["global_step"] == 6


def test_it_refuses_rankings_without_a_comparison(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="no comparison"):
        train_reward(config(tiny_model, tmp_path), rows(3, seed=7, ks=[1]))


# -- Data and collator --------------------------------------------------------------------------

def test_load_rankings_skips_ties_and_leaves_unranked_responses_out(tmp_path):
    row = rankings_row(
        task_id=1, prompt="P", responses=[(1, "a"), (2, "b"), (3, "c")],
        annotators=[{"annotator": "x", "ranks": {1: 1, 2: 2}, "ratings": {1: 7, 2: 3}},
                    {"annotator": "y", "ranks": {1: 1, 2: 1, 3: 1}}],
        consensus={1: 1, 2: 2, 3: 2}, agreement=0.5, conversational=False)
    tied = dict(row, task_id=2, consensus=[1, 1, 1])
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (row, tied)))

    consensus = load_rankings(path)
    assert [(e.task_id, e.ranks, e.ratings) for e in consensus] == [(1, (1, 2, 2), (7, 3, None))]
    per_annotator = load_rankings([row, tied], ranking="per_annotator")
    # y tied everything: no comparison; x ranked two of the three responses.
    assert [(e.task_id, e.annotator, e.responses, e.ranks) for e in per_annotator] == [
        (1, "x", ("a", "b"), (1, 2)), (2, "x", ("a", "b"), (1, 2))]


@pytest.mark.parametrize("bad, message", [
    ({"consensus": [1, 2]}, "aligned"),
    ({"consensus": [1, 0, 2]}, "whole number"),
    ({"prompt": 5}, "prompt"),
    ({"responses": [{"completion_id": 1}]}, "responses"),
])
def test_load_rankings_rejects_a_malformed_row(bad, message):
    row = {"task_id": 9, "prompt": "P", "consensus": [1, 2, 3], "annotators": [],
           "responses": [{"completion_id": i, "text": t} for i, t in enumerate("abc")]}
    with pytest.raises(ValueError, match=message):
        load_rankings([dict(row, **bad)])


def test_the_collator_pads_k_from_2_to_9_and_maps_rewards_back(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    elements = load_rankings(rows(8, seed=8, ks=range(2, 10)) + rows(2, seed=9, ties=True))
    batch = RankingCollator(tokenizer, max_length=64, margin=True)(elements)
    ks = [len(e.responses) for e in elements]
    assert batch["input_ids"].shape[0] == sum(ks)
    assert batch["index"].shape == batch["mask"].shape == (len(elements), max(ks))
    assert batch["mask"].sum(dim=1).tolist() == ks
    rows_used = batch["index"][batch["mask"]]
    assert sorted(rows_used.tolist()) == list(range(sum(ks)))
    # Ties give no pair; every other two responses of an element give one.
    expected = sum(sum(1 for i in range(len(e.ranks)) for j in range(len(e.ranks))
                       if e.ranks[i] < e.ranks[j]) for e in elements)
    assert pair_matrix(batch["ranks"], batch["mask"]).sum().item() == expected
    # Margins: max(0, rating of the better - rating of the worse).
    e = elements[0]
    i, j = e.ranks.index(min(e.ranks)), e.ranks.index(max(e.ranks))
    assert batch["margins"][0, i, j].item() == max(0.0, e.ratings[i] - e.ratings[j])
    # Plain prompts end with the end-of-sequence token, like TRL's rows; right padding.
    first = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert first[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(first).startswith(elements[0].prompt)


def test_the_collator_uses_the_chat_template_for_conversational_prompts(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    element = load_rankings(rows(1, seed=10, chat=True, ks=[3]))[0]
    batch = RankingCollator(tokenizer, max_length=256)([element])
    text = tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    messages = [*element.prompt, {"role": "assistant", "content": element.responses[0]}]
    assert text == tokenizer.apply_chat_template(messages, tokenize=False)


def test_long_texts_lose_tokens_on_the_left(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    element = RankedElement(prompt="word " * 100, responses=(" good end", " bad end"),
                            ranks=(1, 2), ratings=(None, None))
    batch = RankingCollator(tokenizer, max_length=16)([element])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][0, -1].item() == tokenizer.eos_token_id


def test_the_shared_prompt_form_gives_the_full_forms_rewards(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    elements = load_rankings(rows(4, seed=11) + rows(4, seed=12, chat=True))
    collator = RankingCollator(tokenizer, max_length=64, share_prompt=True)
    shared = collator(elements)
    full = RankingCollator(tokenizer, max_length=64)(elements)
    assert "prefix_ids" in shared and "input_ids" not in shared
    assert shared["prefix_ids"].shape[0] == len(elements)
    assert shared["suffix_ids"].shape[0] == full["input_ids"].shape[0]
    model.eval()
    torch.testing.assert_close(_rewards(model, shared), _rewards(model, full),
                               atol=1e-5, rtol=1e-4)
    assert shared_prompt_matches(model, collator, elements)


# -- Config -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, error", [
    ({"ranking": "majority"}, ValueError),
    ({"max_length": 0}, ValueError),
    ({"per_device_prompts": 0}, ValueError),
    ({"learning_rate": 0.0}, ValueError),
    ({"learning_rate": float("nan")}, ValueError),
    ({"warmup_ratio": 1.0}, ValueError),
    ({"eval_steps": 0}, ValueError),
    ({"max_steps": 0}, ValueError),
    ({"lr_scheduler_type": "step"}, ValueError),
    ({"model_path": " "}, ValueError),
    ({"bf16": "yes"}, TypeError),
    ({"max_length": 8.5}, TypeError),
    ({"unknown": 1}, TypeError),
])
def test_the_config_rejects_bad_values(bad, error):
    values = {"model_path": "m", "output_dir": "o", **bad}
    with pytest.raises(error):
        RewardConfig(**values)


def test_the_config_builds_training_arguments():
    cfg = RewardConfig(model_path="m", output_dir="o", per_device_prompts=4,
                       gradient_accumulation_steps=2, eval_steps=5, bf16=False)
    args = cfg.training_arguments(evaluate=True)
    assert args.per_device_train_batch_size == 4 and args.gradient_accumulation_steps == 2
    assert args.eval_strategy == "steps" and args.eval_steps == 5
    assert args.metric_for_best_model == "eval_accuracy" and not args.bf16
    assert cfg.training_arguments(evaluate=False).eval_strategy == "no"
