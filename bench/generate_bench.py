"""Tokens per second of batched candidate generation against one prompt at a time.

Both paths run TransformersBackend on the same demo prompts with the same sampling
settings; the batched one groups --batch-size prompts by length (left padding), the
single one uses batches of one. Every candidate is made exactly --max-new-tokens long
(ignore_eos: the end token is suppressed until then), so both paths generate the same
number of tokens and the comparison is time alone. Without --model it builds the tiny
built-in model once into var/bench/tiny-model (the default architecture, 4 layers,
256 wide, trained for only --train-steps steps: speed does not depend on the weights).

    .venv/bin/python -m bench.generate_bench [--model DIR] [--prompts 72]
        [--max-new-tokens 64] [--batch-size 16] [--repeat 3]

Ends with one line: batched_tok_s=<x> single_tok_s=<y> speedup=<x/y>
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from bench.system import system_busy_s

# Benchmarks never download: the model is local or built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "var" / "bench" / "tiny-model"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a save_pretrained directory "
                        f"(default: the tiny model in {DEFAULT_MODEL.relative_to(ROOT)})")
    parser.add_argument("--prompts", type=int, default=72,
                        help="demo prompts to use, cycling (the file holds 72)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=40,
                        help="training steps when the tiny model has to be built")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each path; best counts")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    import torch

    from modelhub.ml.generation import SamplingSettings, TransformersBackend
    from modelhub.ml.loading import inspect_checkpoint
    from modelhub.ml.tiny import build_tiny_model, demo_prompts, demo_texts

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    model_dir = args.model or DEFAULT_MODEL
    if args.model is None and not (model_dir / "model.safetensors").is_file():
        print(f"building the tiny model in {model_dir} ({args.train_steps} steps)...")
        built = build_tiny_model(model_dir, demo_texts(), steps=args.train_steps,
                                 overwrite=model_dir.exists())
        print(f"  {built['parameter_count']:,} parameters, {built['steps']} steps in "
              f"{built['seconds']:.0f} s, loss {built['loss_first']:.2f} -> "
              f"{built['loss_last']:.2f}")
    info = inspect_checkpoint(model_dir)
    prompts = demo_prompts()
    prompts = [prompts[i % len(prompts)] for i in range(args.prompts)]
    settings = SamplingSettings(temperature=args.temperature, top_p=args.top_p,
                                max_new_tokens=args.max_new_tokens, seed=args.seed)

    batched = TransformersBackend(model_dir, device=args.device, batch_size=args.batch_size)
    single = TransformersBackend(model_dir, device=args.device, batch_size=1)
    lengths = sorted(len(batched.encode(p)) for p in prompts)
    padded = sum(max(lengths[i:i + args.batch_size]) * len(lengths[i:i + args.batch_size])
                 for i in range(0, len(lengths), args.batch_size))
    print(f"model {model_dir}: {info['architecture']}, {info['parameter_count']:,} "
          f"parameters, device {batched.model.device}, {torch.get_num_threads()} torch "
          f"threads on {cores} cores")
    print(f"{len(prompts)} demo prompts, {lengths[0]}-{lengths[-1]} tokens "
          f"(median {statistics.median(lengths):.0f}); batches of {args.batch_size} sorted "
          f"by length pad {100 * (1 - sum(lengths) / padded):.1f}% of prompt positions")
    print(f"sampling: {settings.to_dict()}, every candidate {args.max_new_tokens} tokens")

    # Warm-up: the first generate() pays one-off costs (allocations, lazy imports).
    batched.generate(prompts[:2], settings, ignore_eos=True)
    single.generate(prompts[:1], settings, ignore_eos=True)

    # Best of --repeat runs, the two paths taking turns, so that a burst of load from
    # elsewhere on the machine hits one run rather than one path.
    results = {"batched": [], "single": []}
    for run in range(args.repeat):
        for name, backend in (("batched", batched), ("single", single)):
            busy, own = system_busy_s(), time.process_time()
            started = time.perf_counter()
            outputs = backend.generate(prompts, settings, ignore_eos=True)
            seconds = time.perf_counter() - started
            others = max(0.0, (system_busy_s() - busy) - (time.process_time() - own))
            tokens = backend.last_tokens_generated
            results[name].append((tokens, seconds))
            print(f"run {run + 1} {name:>7}: {tokens} tokens in {seconds:6.2f} s = "
                  f"{tokens / seconds:6.1f} tok/s; other processes kept "
                  f"{others / seconds:.2f} cores busy; first candidate "
                  f"{outputs[0][0][:40]!r}")
    expected = len(prompts) * args.max_new_tokens
    counts = {tokens for runs in results.values() for tokens, _ in runs}
    if counts != {expected}:
        print(f"token counts {sorted(counts)} differ from {expected}: the comparison is not fair")
        return 1
    batched_tok_s = expected / min(seconds for _, seconds in results["batched"])
    single_tok_s = expected / min(seconds for _, seconds in results["single"])
    print(f"batched_tok_s={batched_tok_s:.1f} single_tok_s={single_tok_s:.1f} "
          f"speedup={batched_tok_s / single_tok_s:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
