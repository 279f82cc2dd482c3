"""SFT on the tiny model: prompts masked, loss down, a loadable model saved, resumable runs."""

import json
import shutil
import sys

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from modelhub.ml.loading import inspect_checkpoint
from modelhub.ml.tiny import TRAINING_RECORD
from training.datasets.formats import sft_row
from training.sft import build_sft_trainer, collate, load_sft_dataset, masked_fraction, train_sft
from training.sft_config import CHECKPOINTS_DIR, SFTRunConfig

SYSTEM = {"role": "system", "content": "Answer briefly."}
KINDS = [pytest.param(False, id="plain"), pytest.param(True, id="chat")]


def rows(conversational: bool, n: int, start: int = 0) -> list[dict]:
    """Return n sums to learn; a chat file mixes chats and plain prompts (one user turn)."""
    out = []
    for i in range(start, start + n):
        a, b = i % 7, i % 5
        if conversational and i % 2:
            prompt = [SYSTEM, {"role": "user", "content": f"What is {a} plus {b}?"}]
        else:
            prompt = f"Question {i}: what is {a} plus {b}?\nAnswer:"
        out.append(sft_row(prompt, f" The answer is {a + b}.", conversational=conversational,
                           extra={"task_id": i, "annotator_id": i % 3, "category": "open_qa"}))
    return out


def write_jsonl(path, rows_: list[dict]):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows_), encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path):
    """Return {conversational: (train path, valid path)}: 32 training rows, 8 validation."""
    return {
        conversational: (
            write_jsonl(tmp_path / f"train-{conversational}.jsonl", rows(conversational, 32)),
            write_jsonl(tmp_path / f"valid-{conversational}.jsonl",
                        rows(conversational, 8, start=100)),
        )
        for conversational in (False, True)
    }


def make_config(model_path, output_dir, **changes) -> SFTRunConfig:
    settings = dict(model_path=str(model_path), output_dir=str(output_dir), max_length=128,
                    learning_rate=5e-3, max_steps=12, per_device_train_batch_size=4,
                    warmup_ratio=0.0, logging_steps=2, eval_steps=6, save_steps=6, seed=0)
    return SFTRunConfig(**{**settings, **changes})


class LogRecorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append({"step": state.global_step, **(logs or {})})

    def losses(self) -> list[float]:
        return [entry["loss"] for entry in self.logs if "loss" in entry]


@pytest.mark.parametrize("conversational", KINDS)
def test_it_masks_the_prompt_tokens_and_learns_the_completion(tmp_path, tiny_model, data,
                                                              conversational):
    trainer = build_sft_trainer(make_config(tiny_model, tmp_path / "out"),
                                data[conversational][0], cache_dir=tmp_path / "cache")
    tokenizer = trainer.processing_class
    source = rows(conversational, 6)
    batch = collate(trainer, range(6))

    prompt_tokens = real_tokens = 0
    for i, row in enumerate(source):
        if conversational:
            prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True,
                                                   tokenize=True, return_dict=True)["input_ids"]
            learned = row["completion"][0]["content"] + "<|end|>\n"
        else:
            prompt = tokenizer(row["prompt"])["input_ids"]
            learned = row["completion"] + tokenizer.eos_token
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        n = int(batch["attention_mask"][i].sum())
        p = len(prompt)
        assert ids[:p].tolist() == prompt
        assert (labels[:p] == -100).all(), "a prompt token carries a label"
        assert labels[p:n].tolist() == ids[p:n].tolist(), "a completion token is masked"
        assert (labels[n:] == -100).all(), "padding carries a label"
        # The response and its end-of-turn token are learned, nothing else.
        assert tokenizer.decode(labels[p:n]) == learned
        prompt_tokens, real_tokens = prompt_tokens + p, real_tokens + n
    assert masked_fraction(batch) == pytest.approx(prompt_tokens / real_tokens)
    # The extra columns (ids, category) never reach the model.
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


@pytest.mark.parametrize("conversational", KINDS)
def test_it_trains_and_saves_a_loadable_model(tmp_path, tiny_model, data, conversational):
    train, valid = data[conversational]
    out = tmp_path / "out"
    recorder = LogRecorder()
    metrics = train_sft(make_config(tiny_model, out, eval_on_start=True), train, valid,
                        callbacks=[recorder], cache_dir=tmp_path / "cache")

    assert metrics["global_step"] == 12
    losses = recorder.losses()
    assert len(losses) == 7  # step 1, then every 2 steps
    assert losses[-1] < losses[0] * 0.8
    assert metrics["eval_loss"] < metrics["eval_loss_start"] * 0.8
    assert metrics["train_loss"] > 0 and 0 < metrics["masked_fraction"] < 1
    assert [e["step"] for e in recorder.logs if "eval_loss" in e] == [0, 6, 12]

    before = load_file(tiny_model / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[name], after[name]) for name in before)

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_model).chat_template
    assert inspect_checkpoint(out)["is_chat"]
    with torch.no_grad():
        logits = model(**tokenizer("Question 1: what is 1 plus 1?\nAnswer:",
                                   return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
    # Only safetensors: no pickled training arguments among the model files.
    assert not list(out.glob("*.bin"))
    record = json.loads((out / TRAINING_RECORD).read_text(encoding="utf-8"))
    assert record["kind"] == "sft" and record["metrics"] == metrics
    assert SFTRunConfig(**record["config"]) == make_config(tiny_model, out, eval_on_start=True)
    assert (out / CHECKPOINTS_DIR / "checkpoint-12").is_dir()


def test_it_resumes_from_a_checkpoint_and_continues_the_step_count(tmp_path, tiny_model):
    # Datasets in memory rather than files: train_sft takes both.
    train = Dataset.from_list(rows(False, 32))
    out = tmp_path / "out"
    first = train_sft(make_config(tiny_model, out, max_steps=4, save_steps=4), train)
    assert first["global_step"] == 4
    assert (out / CHECKPOINTS_DIR / "checkpoint-4").is_dir()

    recorder = LogRecorder()
    second = train_sft(make_config(tiny_model, out, max_steps=8, save_steps=4), train,
                       callbacks=[recorder], resume_from_checkpoint=True)
    assert second["global_step"] == 8
    steps = [entry["step"] for entry in recorder.logs if "loss" in entry]
    assert steps and min(steps) > 4, "the resumed run started over"
    assert (out / CHECKPOINTS_DIR / "checkpoint-8").is_dir()


def test_lora_trains_adapters_and_saves_them_merged(tmp_path, tiny_model, data):
    base = load_file(tiny_model / "model.safetensors")
    recorder = LogRecorder()
    config = make_config(tiny_model, tmp_path / "out", use_lora=True, lora_r=8,
                         lora_alpha=16.0, lora_dropout=0.0, lora_target_modules=["c_attn"],
                         learning_rate=2e-2, eval_steps=None)
    train_sft(config, data[False][0], callbacks=[recorder])
    losses = recorder.losses()
    assert losses[-1] < losses[0]
    out = tmp_path / "out"
    # The adapters are merged: a plain model, no adapter files, loadable as any other.
    assert not (out / "adapter_config.json").exists()
    assert inspect_checkpoint(out)["architecture"] == "GPT2LMHeadModel"
    AutoModelForCausalLM.from_pretrained(out)
    merged = load_file(out / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all("c_attn" in k for k in changed), changed  # only adapted layers


def test_lora_without_peft_raises_a_clear_error(tmp_path, tiny_model, data, monkeypatch):
    # None in sys.modules makes "import peft" fail, whether or not peft is installed.
    monkeypatch.setitem(sys.modules, "peft", None)
    config = make_config(tiny_model, tmp_path / "out", use_lora=True, lora_r=4)
    with pytest.raises(ImportError, match="use_lora=True needs the peft library"):
        train_sft(config, data[False][0], cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_it_refuses_data_that_is_not_prompt_completion(tmp_path):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    messages = write_jsonl(tmp_path / "messages.jsonl", [{"messages": chat}])
    with pytest.raises(ValueError, match="no completion or prompt column"):
        load_sft_dataset(messages, cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError):
        load_sft_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="has no rows"):
        load_sft_dataset(Dataset.from_dict({"prompt": [], "completion": []}))


def test_chat_data_needs_a_chat_template(tmp_path, tiny_model, data):
    model = shutil.copytree(tiny_model, tmp_path / "no-template")
    (model / "chat_template.jinja").unlink()
    config = make_config(model, tmp_path / "out")
    with pytest.raises(ValueError, match="no chat template"):
        build_sft_trainer(config, data[True][0], cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(("changes", "field"), [
    ({"lora_alpha": 0}, "lora_alpha"),
    ({"max_length": 0}, "max_length"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"num_train_epochs": -1}, "num_train_epochs"),
    ({"max_steps": 0}, "max_steps"),
    ({"per_device_train_batch_size": True}, "per_device_train_batch_size"),
    ({"gradient_accumulation_steps": 1.5}, "gradient_accumulation_steps"),
    ({"warmup_ratio": 1.0}, "warmup_ratio"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"eval_steps": 0}, "eval_steps"),
    ({"save_steps": 0}, "save_steps"),
    ({"seed": -1}, "seed"),
    ({"bf16": "auto"}, "bf16"),
    ({"lr_scheduler_type": "exponential"}, "lr_scheduler_type"),
    ({"lora_r": 0}, "lora_r"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"lora_target_modules": []}, "lora_target_modules"),
    ({"lora_target_modules": ["c_attn", "lm_head"]}, "lora_target_modules"),
])
def test_the_config_rejects_bad_values(tmp_path, changes, field):
    with pytest.raises(ValueError, match=f"invalid SFT config: {field} "):
        make_config("model", tmp_path / "out", **changes)


def test_the_config_needs_both_paths(tmp_path):
    with pytest.raises(ValueError, match="model_path must be a non-empty path"):
        SFTRunConfig(model_path=" ", output_dir=str(tmp_path))
    with pytest.raises(TypeError, match="output_dir"):
        SFTRunConfig(model_path="model")
    # Paths may be given as Path objects: they are kept as strings (JSON-ready).
    assert SFTRunConfig(model_path=tmp_path, output_dir=tmp_path).output_dir == str(tmp_path)


def test_the_config_has_help_for_every_field():
    from dataclasses import fields
    assert all(f.metadata.get("help") for f in fields(SFTRunConfig))


def test_the_trl_config_trains_on_completions_only_and_reports_nowhere(tmp_path):
    config = make_config("model", tmp_path / "out", max_steps=None, warmup_ratio=0.1)
    args = config.to_trl()
    assert args.completion_only_loss is True and args.assistant_only_loss is False
    assert args.report_to == [] and args.save_strategy == "steps" and args.save_steps == 6
    assert args.seed == 0 and args.max_steps == -1 and args.warmup_steps == 0.1
    assert args.output_dir == str(tmp_path / "out" / CHECKPOINTS_DIR)
    assert args.eval_strategy == "no" and config.to_trl(evaluate=True).eval_strategy == "steps"
    assert args.activation_checkpointing is False
    cuda = torch.cuda.is_available()
    assert args.use_cpu is not cuda
    assert args.bf16 is (cuda and torch.cuda.is_bf16_supported())


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
                    reason="this machine supports bf16")
def test_forcing_bf16_without_a_bf16_gpu_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="bf16=True needs a CUDA GPU"):
        make_config("model", tmp_path / "out", bf16=True).to_trl()
