"""PPO-ptx steps on the tiny model: episodes and response tokens per second.

The whole step as a run does it: rollouts sampled from the policy (KV cache), the
reward model scoring the rendered texts, policy, reference and value passes, GAE, the
clipped updates of the policy and value model with a pretraining-mix batch. The models:
the tiny GPT-2 built offline (2 layers, 64 wide; ``--layers``/``--width`` for another),
a reward model made from it (a new scalar head), the value model starting from that.
Prompts: the demo prompts. After ``--warmup`` steps, ``--steps`` steps are timed.

    .venv/bin/python -m bench.ppo_speed
    .venv/bin/python -m bench.ppo_speed --rollout-prompts 32 --response-length 64

Ends with one line: episodes_per_s=<x> tokens_per_s=<y> rollout_share=<r> step_s=<s>
(tokens: response tokens generated, eos included; rollout_share: the part of a step spent
sampling and scoring, the rest is the update).
"""

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import orjson  # noqa: E402
import torch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rollout-prompts", type=int, default=16)
    parser.add_argument("--mini-batch-prompts", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: see the README on timing a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from modelhub.ml.tiny import build_tiny_model, demo_prompts, demo_texts
    from training.ppo import PPOTrainer
    from training.ppo_config import PPOConfig
    from training.reward_trainer import load_reward_model

    with tempfile.TemporaryDirectory(prefix="ppo-speed-") as tmp:
        work = Path(tmp)
        base = work / "base"
        build_tiny_model(base, demo_texts(), seed=0, steps=20, n_layer=args.layers,
                         n_embd=args.width, n_head=4, vocab_size=2000, seq_len=64,
                         batch_size=8)
        tokenizer = AutoTokenizer.from_pretrained(base)
        torch.manual_seed(0)
        reward = load_reward_model(str(base), tokenizer)
        reward.save_pretrained(work / "rm")
        tokenizer.save_pretrained(work / "rm")
        ptx = work / "ptx.jsonl"
        ptx.write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in demo_texts()[:64]))
        config = PPOConfig(
            model_path=str(base), reward_model_path=str(work / "rm"),
            ptx_data_path=str(ptx), output_dir=str(work / "out"),
            max_steps=args.warmup + args.steps, rollout_prompts=args.rollout_prompts,
            mini_batch_prompts=args.mini_batch_prompts,
            response_length=args.response_length, learning_rate=1e-5, seed=0)
        trainer = PPOTrainer(config, demo_prompts())
        for step in range(1, args.warmup + 1):
            trainer.step(step)
        rollout = update = tokens = 0.0
        started = time.perf_counter()
        for step in range(args.warmup + 1, args.warmup + args.steps + 1):
            figures = trainer.step(step)
            rollout += figures["rollout_seconds"]
            update += figures["update_seconds"]
            tokens += figures["tokens"]
        elapsed = time.perf_counter() - started

    episodes = args.steps * args.rollout_prompts
    print(f"{args.steps} steps of {args.rollout_prompts} prompts, responses up to "
          f"{args.response_length} tokens ({tokens / episodes:.1f} on average), "
          f"{args.layers} layers x {args.width}, {args.threads} thread(s): {elapsed:.2f} s; "
          f"rollout {rollout:.2f} s, update {update:.2f} s", flush=True)
    print(f"episodes_per_s={episodes / elapsed:.1f} tokens_per_s={tokens / elapsed:.0f} "
          f"rollout_share={rollout / (rollout + update):.2f} step_s={elapsed / args.steps:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
