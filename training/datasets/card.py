"""A Hugging Face dataset card (README.md) for an export: YAML metadata, then what it holds."""

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

# PyYAML comes with datasets and huggingface_hub, which read these cards.
import yaml

from labeling.agreement import INSTRUCTGPT_AGREEMENT

# kind -> (what it is, Hub task categories); the kinds of DatasetSnapshot.Kind.
KINDS: dict[str, tuple[str, list[str]]] = {
    "sft": ("Demonstrations for supervised fine-tuning (SFT)", ["text-generation"]),
    "preference_pairs": ("Preference pairs for a reward model", ["text-classification"]),
    "rankings": ("K-way rankings for a reward model", ["text-classification"]),
    "prompts": ("Prompts for PPO", ["text-generation", "reinforcement-learning"]),
}

FORMATS = {
    "sft": (
        "Prompt-completion rows: `prompt` and `completion`. TRL's `SFTTrainer` computes "
        "the loss on the completion only for this form."
    ),
    "preference_pairs": (
        "Explicit-prompt preference rows: `prompt`, `chosen` and `rejected`. TRL's "
        "`RewardTrainer` and `DPOTrainer` read them as they are."
    ),
    "rankings": (
        "One row per task: `responses` (`completion_id`, `text`), `annotators` (each "
        "with `ranks`, `ratings` and `flags`), `consensus` and `agreement`. Every "
        "per-response list is aligned with `responses`: `ranks[i]` is the rank the "
        "annotator gave `responses[i]` (1 is best, equal ranks are a tie, null: not ranked)."
    ),
    "prompts": (
        "One prompt per row: `prompt_id`, `prompt`, `category` and `split`. TRL's online "
        "trainers read the `prompt` column."
    ),
}

MERGES = {
    "per_annotator": "each annotator's ranking gives its own pairs (the `annotator` column).",
    "consensus": (
        "the rankings of a task are merged into one by ranked pairs (Tideman), and the "
        "pairs come from that consensus; margins use the mean ratings."
    ),
    "majority": (
        "for every two responses, the one strictly more annotators preferred is chosen "
        "(an even split gives no pair); a margin is the vote difference divided by the "
        "annotators who ranked both."
    ),
}

PAIR_POLICIES = {
    "all": "every two responses with different ranks: C(K, 2) pairs for a strict ranking.",
    "adjacent": "only responses of consecutive rank levels: K - 1 pairs for a strict ranking.",
}

USAGE = {
    "sft": (
        "from trl import SFTConfig, SFTTrainer\n\n"
        "trainer = SFTTrainer(\n"
        "    model=\"path/to/base-model\",\n"
        "    args=SFTConfig(output_dir=\"sft\"),\n"
        "    train_dataset=ds[\"train\"],\n"
        ")\n"
        "trainer.train()"
    ),
    "preference_pairs": (
        "from trl import RewardConfig, RewardTrainer\n\n"
        "trainer = RewardTrainer(\n"
        "    model=\"path/to/sft-model\",\n"
        "    args=RewardConfig(output_dir=\"reward\"),\n"
        "    train_dataset=ds[\"train\"],\n"
        ")\n"
        "trainer.train()"
    ),
    "rankings": (
        "# No TRL trainer reads K-way rankings: Laoshi's reward trainer does, or expand\n"
        "# each row into pairs first (training.datasets.formats.task_pairs).\n"
        "row = ds[\"train\"][0]\n"
        "for annotator in row[\"annotators\"]:\n"
        "    print(annotator[\"annotator\"], annotator[\"ranks\"])"
    ),
    "prompts": (
        "from trl import GRPOConfig, GRPOTrainer\n\n"
        "trainer = GRPOTrainer(\n"
        "    model=\"path/to/sft-model\",\n"
        "    reward_funcs=\"path/to/reward-model\",\n"
        "    args=GRPOConfig(output_dir=\"policy\"),\n"
        "    train_dataset=ds[\"train\"],\n"
        ")\n"
        "trainer.train()"
    ),
}

_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
          (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
          (1_000_000_000, "100M<n<1B")]


def size_category(rows: int) -> str:
    """Return the Hub's size category for a number of rows."""
    for limit, label in _SIZES:
        if rows < limit:
            return label
    return "n>1B"


def _data_files(files: Mapping[str, str | Mapping[str, str]]) -> list[dict[str, str]]:
    """Return the default config's data files: JSON Lines if every split has one, else Parquet."""
    # A config reads one format: datasets picks its builder from the file extensions.
    by_split = {split: ({"jsonl": f} if isinstance(f, str) else dict(f))
                for split, f in files.items()}
    for fmt in ("jsonl", "parquet"):
        if all(fmt in f for f in by_split.values()):
            return [{"split": split, "path": f[fmt]} for split, f in by_split.items()]
    raise ValueError(f"every split needs a jsonl or a parquet file: {dict(files)!r}")


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list | tuple) and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _counts_table(splits: Sequence[str], counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    categories = sorted({c for split in splits for c in counts.get(split, {})}, key=str)
    if not categories:
        return ["No category counts."]
    lines = ["| category | " + " | ".join(_cell(s) for s in splits) + " | total |",
             "|---" * (len(splits) + 2) + "|"]
    for category in categories:
        row = [counts.get(split, {}).get(category, 0) for split in splits]
        lines.append(f"| {_cell(category)} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    return lines


def dataset_card(
    *,
    name: str,
    kind: str,
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    counts_by_category: Mapping[str, Mapping[str, int]],
    filters: Mapping[str, Any],
    merge: str | None,
    pair_policy: str | None,
    agreement: Mapping[str, Any] | None,
    license: str,
    content_hash: str,
    created_at: datetime | str,
    files: Mapping[str, str | Mapping[str, str]],
) -> str:
    """Return the README.md of an export: Hub metadata, then summary, filters, counts, usage.

    ``splits``: the rows of each split (only their number and the first row's columns are
    read); ``counts_by_category``: ``{split: {category: rows}}``; ``files``: each split's
    file name, or ``{format: file name}`` (``"jsonl"``, ``"parquet"``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    description, task_categories = KINDS[kind]
    split_names = list(splits)
    counts = {split: len(rows) for split, rows in splits.items()}
    total = sum(counts.values())
    first = next((rows[0] for rows in splits.values() if len(rows)), None)
    created = created_at.isoformat() if isinstance(created_at, datetime) else created_at
    title = " ".join(name.split())

    metadata = {
        "license": license,
        "pretty_name": title,
        "task_categories": task_categories,
        "size_categories": [size_category(total)],
        "tags": ["laoshi", "rlhf", "trl"],
        "configs": [{"config_name": "default", "data_files": _data_files(files)}],
    }
    lines = ["---", yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip(),
             "---", "", f"# {title}", ""]

    lines += ["## Summary", "",
              f"{description}, exported by Laoshi, an RLHF annotation tool: {total} rows ("
              + ", ".join(f"{split} {counts[split]}" for split in split_names) + ").", "",
              FORMATS[kind]]
    if first is not None:
        prompt = first.get("prompt")
        form = ("conversational: lists of `role`/`content` messages"
                if isinstance(prompt, list) else "standard: plain text")
        lines += ["", "Columns: " + ", ".join(f"`{c}`" for c in first) + "."]
        if "prompt" in first:
            lines += [f"Prompts are {form}."]
        if "margin" in first:
            what = ("the majority's share of the votes" if merge == "majority"
                    else "the rating difference, never negative")
            lines += [f"Every row carries a `margin` ({what}), which `RewardTrainer` "
                      "subtracts inside its loss."]

    lines += ["", "## How it was filtered", ""]
    if filters:
        lines += [f"- `{key}`: {_value(value)}" for key, value in filters.items()]
    else:
        lines += ["No filter: every eligible label was exported."]

    lines += ["", "## Merge and pair policy", ""]
    if merge is None and pair_policy is None:
        lines += ["Not applicable: rows are not expanded into pairs."]
    if merge is not None:
        lines += [f"- Merge `{merge}`: {MERGES.get(merge, 'see the exporter.')}"]
    if pair_policy is not None:
        lines += [f"- Pairs `{pair_policy}`: {PAIR_POLICIES.get(pair_policy, 'see the exporter.')}"]

    lines += ["", "## Counts", "", "| split | rows |", "|---|---|"]
    lines += [f"| {_cell(split)} | {counts[split]} |" for split in split_names]
    lines += [f"| total | {total} |", ""]
    lines += _counts_table(split_names, counts_by_category)

    lines += ["", "## Agreement", ""]
    if agreement:
        lines += [f"- {key}: {_value(value)}" for key, value in agreement.items()]
        lines += ["", f"For reference, InstructGPT's labelers agreed on "
                      f"{INSTRUCTGPT_AGREEMENT:.1%} of comparisons."]
    else:
        lines += ["Not computed for this export."]

    data_files = {f["split"]: f["path"] for f in _data_files(files)}
    builder = "json" if all(p.endswith(".jsonl") for p in data_files.values()) else "parquet"
    lines += ["", "## Loading", "", "```python", "from datasets import load_dataset", "",
              "# The folder holding this README: its configs name the files of each split.",
              "ds = load_dataset(\"path/to/this/folder\")",
              f"# Or name the files: load_dataset({builder!r}, data_files={data_files!r})",
              "```", "", "```python", USAGE[kind], "```"]

    lines += ["", "## Integrity", "",
              f"- Created: {created}",
              f"- Content hash (sha256 over the canonical JSON lines): `{content_hash}`", ""]
    return "\n".join(lines)
