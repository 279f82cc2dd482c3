"""Laoshi's K-way reward trainer against TRL's RewardTrainer on the same rankings.

Synthetic rankings where the quality of a response is the number of times it says
"good" (0-9, every response of a prompt a different count, so the true order is strict).
Each training ranking is that true order seen through noise: an annotator ranks by
count + N(0, sigma^2), sigma set so that two annotators agree on about 73% of the pairs
(InstructGPT's inter-labeler agreement); each prompt carries one such ranking. Both
trainers start from the same tiny GPT-2 (2 layers, 64 wide, built offline) with a new
scalar head, and see the same prompts for the same epochs with the same optimizer,
learning rate, schedule, seed and max_length. TRL gets the rankings expanded to all
C(K, 2) pairs (explicit prompt/chosen/rejected rows) and, per optimizer step, the
comparisons the K-way trainer's prompts hold (prompts x C(K, 2) pairs), so both take
the same optimizer steps over the same comparisons. TRL's step runs as K-1 micro-batches
(gradients accumulated) of prompts x K / 2 pairs, prompts x K sequences: the K-way
trainer's batch size in sequences, so that neither side runs batches of a size the other
does not (``--trl-one-batch``: the whole step in one batch, slower still on a CPU).
Held-out accuracy: the share of the held-out prompts' pairs that the trained model
orders as the TRUE counts do, averaged over ``--seeds`` draws of data and initial head.

    .venv/bin/python -m bench.reward_speed
    .venv/bin/python -m bench.reward_speed --train-prompts 400 --epochs 3 --ks 4,9

Wall time covers everything from rows in memory to a saved model: loading, TRL's
tokenizing of the pair dataset, training, Laoshi's bias scoring, saving. Ends with one
line: ratio_k4=<x> ratio_k9=<y> acc_kway_k4=<a> acc_trl_k4=<b> acc_kway_k9=<c>
acc_trl_k9=<d> acc_ok=<true|false>.
"""

import argparse
import itertools
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

FILLER = ("the a of to and in is it that for on with as was this by an be at or from "
          "but not are have all there they one more when what so can out if about").split()
# Two accuracies count as equal within this much (about one standard error of a held-out
# accuracy over a few thousand correlated pairs).
ACC_TOLERANCE = 0.01


def make_rows(n: int, k: int, rng: random.Random, sigma: float, *, start: int = 0,
              response_words: int = 16, prompt_words: int = 24) -> list[dict]:
    """Return n rankings rows; each response's true quality is in "true_scores"."""
    rows = []
    for t in range(start, start + n):
        prompt = f"Task {t}: " + " ".join(rng.choice(FILLER) for _ in range(prompt_words))
        counts = rng.sample(range(10), k)
        texts = []
        for count in counts:
            words = [rng.choice(FILLER) for _ in range(response_words - count)] + ["good"] * count
            rng.shuffle(words)
            texts.append(" " + " ".join(words))
        noisy = [c + rng.gauss(0.0, sigma) for c in counts]
        ranks = _ranks(noisy)
        rows.append({
            "task_id": t, "prompt": prompt,
            "responses": [{"completion_id": i, "text": text} for i, text in enumerate(texts)],
            "annotators": [{"annotator": "a", "ranks": ranks, "ratings": [None] * k,
                            "flags": [[] for _ in range(k)]}],
            "consensus": ranks, "agreement": None, "true_scores": counts,
        })
    return rows


def _ranks(scores: list[float]) -> list[int]:
    """Return ranks (1 = highest score) of distinct scores."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [0] * len(scores)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


def annotator_agreement(k: int, sigma: float, *, trials: int = 4000, seed: int = 1) -> float:
    """Return the share of pairs on which two independent noisy annotators agree."""
    rng = random.Random(seed)
    agree = total = 0
    for _ in range(trials):
        counts = rng.sample(range(10), k)
        a = [c + rng.gauss(0, sigma) for c in counts]
        b = [c + rng.gauss(0, sigma) for c in counts]
        for i, j in itertools.combinations(range(k), 2):
            agree += (a[i] > a[j]) == (b[i] > b[j])
            total += 1
    return agree / total


def sigma_for(k: int, target: float = 0.73) -> float:
    """Return the noise sigma that gives two annotators ``target`` pairwise agreement."""
    low, high = 0.01, 20.0
    for _ in range(30):
        mid = (low + high) / 2
        if annotator_agreement(k, mid) > target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def pair_rows(rows: list[dict]) -> list[dict]:
    """Return TRL preference rows: every pair of each ranking, better side as chosen."""
    out = []
    for row in rows:
        texts = [r["text"] for r in row["responses"]]
        ranks = row["consensus"]
        for i, j in itertools.combinations(range(len(texts)), 2):
            if ranks[i] == ranks[j]:
                continue
            better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
            out.append({"prompt": row["prompt"], "chosen": texts[better],
                        "rejected": texts[worse]})
    return out


def true_accuracy(model, tokenizer, rows: list[dict], max_length: int) -> float:
    """Return the share of held-out pairs the model orders as the true scores do."""
    from training.reward_trainer import score_responses

    pairs = [(row["prompt"], r["text"]) for row in rows for r in row["responses"]]
    scores = score_responses(model, tokenizer, pairs, max_length=max_length,
                             batch_size=64).tolist()
    correct = total = at = 0
    for row in rows:
        k = len(row["responses"])
        rewards, truth = scores[at:at + k], row["true_scores"]
        at += k
        for i, j in itertools.combinations(range(k), 2):
            total += 1
            correct += (rewards[i] - rewards[j]) * (truth[i] - truth[j]) > 0
    return correct / total


def run_kway(model_dir: Path, out: Path, rows: list[dict], args, seed: int,
             share_prompt: bool = True) -> tuple[float, Path]:
    from training.reward_config import RewardConfig
    from training.reward_trainer import train_reward

    config = RewardConfig(
        model_path=str(model_dir), output_dir=str(out), max_length=args.max_length,
        per_device_prompts=args.prompts_per_step, learning_rate=args.lr,
        lr_scheduler_type="linear", num_train_epochs=args.epochs, warmup_ratio=0.0,
        weight_decay=0.0, max_grad_norm=1.0, logging_steps=10_000, save_steps=10_000,
        seed=seed, bf16=False, share_prompt=share_prompt)
    started = time.perf_counter()
    train_reward(config, rows)
    return time.perf_counter() - started, out


def run_trl(model_dir: Path, out: Path, rows: list[dict], k: int, args,
            seed: int) -> tuple[float, Path]:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    pairs = pair_rows(rows)
    # The same comparisons per optimizer step as the K-way trainer's prompts hold, in
    # micro-batches of as many sequences as the K-way trainer's batch has (prompts x K),
    # gradients accumulated: neither side gets a batch that spills out of the CPU caches.
    per_step = args.prompts_per_step * math.comb(k, 2)
    accumulation = 1 if args.trl_one_batch else k - 1
    config = RewardConfig(
        output_dir=str(out), max_length=args.max_length,
        per_device_train_batch_size=per_step // accumulation,
        gradient_accumulation_steps=accumulation,
        learning_rate=args.lr, lr_scheduler_type="linear", num_train_epochs=args.epochs,
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=seed, data_seed=seed,
        bf16=False, gradient_checkpointing=False, logging_steps=10_000, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_pin_memory=False)
    started = time.perf_counter()
    trainer = RewardTrainer(model=str(model_dir), args=config,
                            train_dataset=Dataset.from_list(pairs))
    trainer.train()
    trainer.save_model(str(out))
    return time.perf_counter() - started, out


def held_out_accuracy(directory: Path, rows: list[dict], max_length: int) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return true_accuracy(model, tokenizer, rows, max_length)


def measure(k: int, seed: int, model_dir: Path, work: Path, args, *, full: bool) -> dict:
    """Train both trainers on one draw of data (seed); with ``full``, also K-way unshared."""
    sigma = sigma_for(k)
    rng = random.Random(seed * 1000 + k)
    train = make_rows(args.train_prompts, k, rng, sigma)
    held_out = make_rows(args.eval_prompts, k, rng, sigma, start=args.train_prompts)
    if seed == args.seed:
        label_truth = statistics.mean(
            (r["consensus"][i] < r["consensus"][j]) == (r["true_scores"][i] > r["true_scores"][j])
            for r in train for i, j in itertools.combinations(range(k), 2))
        print(f"K={k}: sigma={sigma:.3f}, two annotators agree on "
              f"{annotator_agreement(k, sigma):.3f} of pairs, the training labels agree with "
              f"the truth on {label_truth:.3f}; {len(train)} train prompts "
              f"({len(train) * math.comb(k, 2)} pairs), {len(held_out)} held out", flush=True)
    result = {}
    result["kway_s"], kway_dir = run_kway(model_dir, work / f"kway-{k}-{seed}", train, args, seed)
    if full:
        result["full_s"], _ = run_kway(model_dir, work / f"full-{k}-{seed}", train, args, seed,
                                       share_prompt=False)
    result["trl_s"], trl_dir = run_trl(model_dir, work / f"trl-{k}-{seed}", train, k, args, seed)
    result["acc_kway"] = held_out_accuracy(kway_dir, held_out, args.max_length)
    result["acc_trl"] = held_out_accuracy(trl_dir, held_out, args.max_length)
    for directory in (kway_dir, trl_dir):
        shutil.rmtree(directory)
    print(f"K={k} seed {seed}: kway {result['kway_s']:.1f} s"
          + (f" (without prompt sharing {result['full_s']:.1f} s)" if full else "")
          + f", trl {result['trl_s']:.1f} s; held-out accuracy against the truth: kway "
          f"{result['acc_kway']:.3f}, trl {result['acc_trl']:.3f}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="4,9", help="comma-separated K values (4,9)")
    parser.add_argument("--train-prompts", type=int, default=256)
    parser.add_argument("--eval-prompts", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3,
                        help="data draws and initialisations per K; accuracies are averaged")
    parser.add_argument("--trl-one-batch", action="store_true",
                        help="give TRL each step's pairs in one batch, not in K-1 micro-batches")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: see the README on timing a shared machine)")
    args = parser.parse_args()
    if args.prompts_per_step % 2:
        parser.error("--prompts-per-step must be even (TRL's micro-batches hold prompts x K / 2 "
                     "pairs)")

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    from modelhub.ml.tiny import tiny_test_model

    seeds = [args.seed + i for i in range(args.seeds)]
    summary = {}
    with tempfile.TemporaryDirectory(prefix="reward-speed-") as tmp:
        work = Path(tmp)
        model_dir = tiny_test_model(work / "base", seed=args.seed)
        for k in (int(x) for x in args.ks.split(",")):
            runs = [measure(k, seed, model_dir, work, args, full=seed == args.seed)
                    for seed in seeds]
            kway_s = sum(r["kway_s"] for r in runs)
            trl_s = sum(r["trl_s"] for r in runs)
            summary[k] = {
                "ratio": trl_s / kway_s,
                "acc_kway": statistics.mean(r["acc_kway"] for r in runs),
                "acc_trl": statistics.mean(r["acc_trl"] for r in runs),
            }
            print(f"K={k}: {len(runs)} seeds, kway {kway_s:.1f} s, trl {trl_s:.1f} s, ratio "
                  f"{summary[k]['ratio']:.2f} (without prompt sharing, first seed: "
                  f"{runs[0]['trl_s'] / runs[0]['full_s']:.2f}); mean held-out accuracy kway "
                  f"{summary[k]['acc_kway']:.3f}, trl {summary[k]['acc_trl']:.3f}", flush=True)

    ok = all(r["acc_kway"] >= r["acc_trl"] - ACC_TOLERANCE for r in summary.values())
    parts = [f"ratio_k{k}={r['ratio']:.2f}" for k, r in summary.items()]
    for k, r in summary.items():
        parts += [f"acc_kway_k{k}={r['acc_kway']:.3f}", f"acc_trl_k{k}={r['acc_trl']:.3f}"]
    print(" ".join(parts + [f"acc_ok={'true' if ok else 'false'}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
