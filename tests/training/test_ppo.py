"""PPO-ptx on the tiny model: a synthetic reward rises with bounded KL; checkpoints resume
exactly; the reward model's bias, the pretraining mix and NaN guards work."""

import shutil

import orjson
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelhub.ml.generation import until_first_eos
from modelhub.ml.tiny import TRAINING_RECORD, demo_prompts
from training.checkpoints import MARKER, latest_checkpoint
from training.ppo import (
    PPOTrainer,
    load_prompts,
    load_ptx_texts,
    prompt_ids,
    train_ppo,
)
from training.ppo_config import PPOConfig
from training.reward_trainer import BIAS_KEY, load_reward_model

PROMPTS = [p for p in demo_prompts() if isinstance(p, str)][:40]


# The synthetic reward: how many of the response's tokens are among these hundred (the
# tiny model writes about three in sixteen of them at first).
TARGET = range(300, 400)


def count_reward(prompts, texts, ids):
    return torch.tensor([float(sum(t in TARGET for t in row)) for row in ids])


def config(tiny_model, tmp_path, **overrides):
    values = dict(model_path=str(tiny_model), reward_model_path=str(tiny_model),
                  value_model_path=str(tiny_model), output_dir=str(tmp_path / "out"),
                  max_steps=4, rollout_prompts=8, mini_batch_prompts=4, response_length=8,
                  learning_rate=1e-3, save_steps=1000, seed=0)
    values.update(overrides)
    return PPOConfig(**values)


def test_ppo_raises_a_synthetic_reward_with_bounded_kl(tiny_model, tmp_path):
    cfg = config(tiny_model, tmp_path, max_steps=16, rollout_prompts=16, mini_batch_prompts=8,
                 response_length=16, learning_rate=3e-3, kl_coef=0.05)
    logs = []
    trainer = PPOTrainer(cfg, PROMPTS, reward_function=count_reward)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.callbacks.append(_Recorder(logs))
    metrics = trainer.train()

    rewards = [entry["reward_mean"] for entry in logs]
    assert [entry["step"] for entry in logs] == list(range(1, 17))
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 1.0, rewards
    # The KL penalty holds the policy near the SFT model: under a nat per token.
    per_token = [entry["kl"] / entry["response_length"] for entry in logs]
    assert max(per_token) < 1.0, per_token
    for key in ("reward_std", "entropy", "clipfrac", "value_loss", "policy_loss", "ptx_loss",
                "response_length", "approx_kl"):
        assert key in logs[-1]
    assert metrics["global_step"] == 16

    out = tmp_path / "out"
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    record = orjson.loads((out / TRAINING_RECORD).read_bytes())
    assert record["kind"] == "ppo" and record["step"] == 16
    assert (out / "model.safetensors").exists()
    assert not list(out.glob("*.bin")) and not (out / ".final-tmp").exists()


class _Recorder:
    def __init__(self, logs):
        self.logs = logs

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append({"step": state.global_step, **logs})

    def on_step_end(self, args, state, control, **kwargs):
        pass

    def on_save(self, args, state, control, **kwargs):
        pass


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny_model, tmp_path):
    reward = count_reward
    whole = config(tiny_model, tmp_path / "a", max_steps=4, save_steps=2)
    train_ppo(whole, [{"prompt": p} for p in PROMPTS], reward_function=reward)

    part = config(tiny_model, tmp_path / "b", max_steps=2, save_steps=1)
    PPOTrainer(part, PROMPTS, reward_function=reward).train()
    checkpoints = part.checkpoint_dir
    assert (checkpoints / "checkpoint-1" / MARKER).exists()
    # A checkpoint that a dying attempt left half-written is not resumed from.
    shutil.copytree(checkpoints / "checkpoint-1", checkpoints / "checkpoint-3")
    (checkpoints / "checkpoint-3" / MARKER).unlink()
    resume = latest_checkpoint(checkpoints)
    assert resume.name == "checkpoint-1"

    logs = []
    rest = config(tiny_model, tmp_path / "b", max_steps=4, save_steps=2)
    trainer = PPOTrainer(rest, PROMPTS, reward_function=reward, callbacks=[_Recorder(logs)])
    trainer.train(resume_from_checkpoint=str(resume))
    assert [entry["step"] for entry in logs] == [2, 3, 4]

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "out").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "out").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_checkpoints_are_complete_and_rotated(tiny_model, tmp_path):
    cfg = config(tiny_model, tmp_path, max_steps=5, save_steps=1, save_total_limit=2)
    PPOTrainer(cfg, PROMPTS, reward_function=count_reward).train()
    kept = sorted(p.name for p in cfg.checkpoint_dir.iterdir())
    assert kept == ["checkpoint-3", "checkpoint-4"]
    folder = cfg.checkpoint_dir / "checkpoint-4"
    state = orjson.loads((folder / MARKER).read_bytes())
    assert state["step"] == 4 and state["kind"] == "ppo" and state["config"]["max_steps"] == 5
    assert [h["step"] for h in state["log_history"]] == [1, 2, 3, 4]
    assert (folder / "policy" / "model.safetensors").exists()
    assert (folder / "value" / "model.safetensors").exists()


def test_the_reward_model_score_less_its_bias_is_the_reward(tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    reward_model = load_reward_model(str(tiny_model), tokenizer)
    reward_model.config.update({BIAS_KEY: 100.0})
    reward_model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    ptx = tmp_path / "ptx.jsonl"
    ptx.write_bytes(b"".join(orjson.dumps({"prompt": p, "completion": " Sure."}) + b"\n"
                             for p in PROMPTS[:6]))
    logs = []
    cfg = config(tiny_model, tmp_path, reward_model_path=str(tmp_path / "rm"),
                 value_model_path=None, ptx_data_path=str(ptx), max_steps=2)
    trainer = PPOTrainer(cfg, PROMPTS, callbacks=[_Recorder(logs)])
    assert trainer.reward_bias == 100.0
    # The value model starts from the reward model.
    start = trainer.accelerator.unwrap_model(trainer.value).model.state_dict()
    assert all(torch.equal(v, reward_model.state_dict()[k]) for k, v in start.items())
    trainer.train()
    assert all(-110 < entry["reward_mean"] < -90 for entry in logs), logs
    assert all(entry["ptx_loss"] > 0 for entry in logs)


def test_nan_in_the_reward_stops_the_run_with_a_clear_error(tiny_model, tmp_path):
    cfg = config(tiny_model, tmp_path, max_steps=2)
    trainer = PPOTrainer(cfg, PROMPTS,
                         reward_function=lambda p, t, i: torch.full((len(t),), float("nan")))
    with pytest.raises(FloatingPointError, match="reward model's score is NaN/Inf at step 1"):
        trainer.train()


def test_prompts_are_checked_with_their_line_numbers(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": [{"role": "user", "content": "hi"}]}\n'
                    '{"prompt": ""}\n')
    with pytest.raises(ValueError, match="prompts row 3"):
        load_prompts(path)
    assert load_prompts([{"prompt": "a"}, {"prompt": [{"role": "user", "content": "b"}]}]) == [
        "a", [{"role": "user", "content": "b"}]]
    with pytest.raises(ValueError, match="no prompt"):
        load_prompts([])


def test_prompts_are_rendered_as_in_sft(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    plain = prompt_ids(tokenizer, "Hello there", 100)
    assert tokenizer.decode(plain) == "Hello there"
    chat = tokenizer.decode(prompt_ids(tokenizer, [{"role": "user", "content": "Hi"}], 100))
    assert chat == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert len(prompt_ids(tokenizer, "one two three four five six", 2)) == 2
    texts = load_ptx_texts([{"text": "raw"}, {"prompt": "Q", "completion": "A"}], tokenizer)
    assert texts == ["raw", "QA" + tokenizer.eos_token]


def test_the_response_ends_at_its_first_eos():
    responses = torch.tensor([[5, 6, 0, 0, 7], [5, 6, 7, 8, 9], [0, 1, 2, 3, 4]])
    assert until_first_eos(responses, [0]).tolist() == [
        [True, True, True, False, False], [True] * 5, [True, False, False, False, False]]
    assert until_first_eos(responses, [0, 9]).tolist()[1] == [True] * 5


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision setting per process: start and end afresh."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_bf16_runs_with_frozen_models_in_bf16(tiny_model, tmp_path, fresh_accelerator_state):
    logs = []
    cfg = config(tiny_model, tmp_path, max_steps=2, bf16=True)
    trainer = PPOTrainer(cfg, PROMPTS, reward_function=count_reward, callbacks=[_Recorder(logs)])
    assert trainer.reference.dtype == torch.bfloat16
    assert trainer.accelerator.unwrap_model(trainer.policy).dtype == torch.float32
    trainer.train()
    assert [entry["step"] for entry in logs] == [1, 2]
    assert all(torch.isfinite(torch.tensor(entry["kl"])) for entry in logs)


def test_held_out_prompts_are_scored_at_eval_steps_and_at_the_end(tiny_model, tmp_path):
    logs = []
    cfg = config(tiny_model, tmp_path, max_steps=3, eval_steps=2, eval_max_prompts=5)
    held_out = [p for p in demo_prompts() if isinstance(p, str)][40:50]
    trainer = PPOTrainer(cfg, PROMPTS, reward_function=count_reward,
                         callbacks=[_Recorder(logs)], eval_prompts=held_out)
    metrics = trainer.train()
    evaluated = [entry["step"] for entry in logs if "eval_reward_mean" in entry]
    assert evaluated == [2, 3]
    for key in ("eval_reward_std", "eval_kl", "eval_response_length"):
        assert key in logs[-1]
    assert metrics["eval_reward_mean"] == pytest.approx(logs[-1]["eval_reward_mean"])
    # The same prompts and seeds each time: the untrained policy scores the same twice.
    first = PPOTrainer(config(tiny_model, tmp_path / "again", eval_max_prompts=5), PROMPTS,
                       reward_function=count_reward, eval_prompts=held_out)
    assert first.evaluate(1) == first.evaluate(2)
