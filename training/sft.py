"""Supervised fine-tuning on demonstrations with TRL's SFTTrainer (loss on responses only).

No Django import. The data is an ``sft`` snapshot split: JSON Lines (or Parquet) rows in
TRL's prompt/completion form, plain or conversational (training.datasets.formats.sft_row).
For plain rows TRL appends the tokenizer's end token to the completion; chat rows go
through the tokenizer's chat template, prompt with the generation prompt. Either way the
prompt's tokens get label -100 and only the response is learned.

    from training.sft import train_sft
    from training.checkpoints import save_final_model
from training.sft_config import SFTRunConfig

    config = SFTRunConfig(model_path="var/models/tiny", output_dir="var/runs/sft-1",
                          max_steps=200, learning_rate=1e-4)
    metrics = train_sft(config, "snapshot/train.jsonl", "snapshot/valid.jsonl")

The output directory then holds the model (safetensors), its tokenizer and
``laoshi_training.json`` (config, metrics, versions), written last; resumable
checkpoints are in its ``checkpoints`` folder (``resume_from_checkpoint=True`` picks
the latest).
"""

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
import trl
from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTTrainer
from trl.data_utils import is_conversational

from modelhub.ml.loading import safetensors_files
from training.checkpoints import save_final_model
from training.sft_config import SFTRunConfig

DataSource = str | os.PathLike | Dataset
logger = logging.getLogger(__name__)
IGNORE_INDEX = -100
# Examples collated to check, before training, that the prompts are masked.
MASK_CHECK_EXAMPLES = 8


def load_sft_dataset(source: DataSource, *, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Return an sft split as a Dataset: a .jsonl / .json / .parquet file, or a Dataset as is.

    Raise ValueError when it is empty or lacks the "prompt" and "completion" columns.
    """
    if isinstance(source, Dataset):
        dataset, name = source, "the dataset"
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no SFT data file at {path}")
        builder = "parquet" if path.suffix == ".parquet" else "json"
        dataset = load_dataset(builder, data_files=str(path), split="train",
                               cache_dir=None if cache_dir is None else str(cache_dir))
        name = str(path)
    else:
        raise TypeError(f"SFT data must be a file path or a datasets.Dataset, "
                        f"not {type(source).__name__}")
    missing = {"prompt", "completion"} - set(dataset.column_names)
    if missing:
        # A "messages" or "text" dataset would train on the prompt too: refused, not guessed.
        raise ValueError(
            f"{name} has no {' or '.join(sorted(missing))} column: SFT reads prompt/completion "
            f"rows (an sft snapshot), and it has {', '.join(dataset.column_names) or 'none'}")
    if len(dataset) == 0:
        raise ValueError(f"{name} has no rows")
    return dataset


def lora_config(config: SFTRunConfig):
    """Return the peft.LoraConfig of a LoRA run; raise ImportError when peft is missing."""
    try:
        from peft import LoraConfig
    except ImportError as error:
        raise ImportError(
            "use_lora=True needs the peft library, which is not installed here: install "
            "peft on the training machines, or set use_lora=False to fine-tune every weight"
        ) from error
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, task_type="CAUSAL_LM")


def build_sft_trainer(
    config: SFTRunConfig,
    train_data: DataSource,
    eval_data: DataSource | None = None,
    *,
    callbacks: Sequence[TrainerCallback] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> SFTTrainer:
    """Return an SFTTrainer ready to train: data loaded and tokenized, model and tokenizer loaded.

    Raise ImportError for LoRA without peft, ValueError for unusable data (no
    prompt/completion columns, chat rows and a tokenizer without a chat template).
    """
    peft_config = lora_config(config) if config.use_lora else None
    args = config.to_trl(evaluate=eval_data is not None)
    train_dataset = load_sft_dataset(train_data, cache_dir=cache_dir)
    eval_dataset = None if eval_data is None else load_sft_dataset(eval_data, cache_dir=cache_dir)

    if not Path(config.model_path).is_dir():
        raise FileNotFoundError(f"no model directory at {config.model_path}")
    # Only safetensors weights and no remote code: the base model may come from a user.
    safetensors_files(config.model_path)
    tokenizer = AutoTokenizer.from_pretrained(config.model_path, trust_remote_code=False,
                                              local_files_only=True)
    chat = any(d is not None and is_conversational(d[0]) for d in (train_dataset, eval_dataset))
    if chat and not tokenizer.chat_template:
        raise ValueError(f"the data is conversational but the tokenizer in {config.model_path} "
                         "has no chat template")
    # float32 master weights: with bf16 on, autocast runs the matmuls in bfloat16 while
    # AdamW updates full-precision weights.
    model = AutoModelForCausalLM.from_pretrained(
        config.model_path, dtype=torch.float32, use_safetensors=True, trust_remote_code=False,
        local_files_only=True)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and args.max_length > positions:
        # Longer examples would index past the position embeddings: cut them to the model.
        logger.warning("max_length %d is more than the model's %d positions: using %d",
                       args.max_length, positions, positions)
        args.max_length = positions
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks or []),
        peft_config=peft_config,
    )


def masked_fraction(batch: Mapping[str, torch.Tensor]) -> float:
    """Return the fraction of a collated batch's real (non-padding) tokens labelled -100."""
    real = batch["attention_mask"].bool()
    masked = (batch["labels"] == IGNORE_INDEX) & real
    return masked.sum().item() / max(1, real.sum().item())


def collate(trainer: SFTTrainer, indices: Sequence[int], *, split: str = "train") -> dict:
    """Return the batch the trainer's collator makes of the given prepared examples."""
    dataset = trainer.train_dataset if split == "train" else trainer.eval_dataset
    return trainer.data_collator([dataset[i] for i in indices])


def train_sft(
    config: SFTRunConfig,
    train_path_or_dataset: DataSource,
    eval_path_or_dataset: DataSource | None = None,
    *,
    callbacks: Sequence[TrainerCallback] | None = None,
    resume_from_checkpoint: str | os.PathLike | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fine-tune config.model_path on the demonstrations and save the result to config.output_dir.

    resume_from_checkpoint: a checkpoint folder, or True for the latest one of this
    output directory; training then continues to max_steps (or the epochs) from the
    step it had reached. Return the metrics: train_loss, global_step, epoch,
    train_runtime, masked_fraction (share of the first batch's tokens that are prompt),
    and eval_loss (plus eval_loss_start with eval_on_start) when there is validation data.
    """
    trainer = build_sft_trainer(config, train_path_or_dataset, eval_path_or_dataset,
                                callbacks=callbacks, cache_dir=cache_dir)
    first = range(min(MASK_CHECK_EXAMPLES, len(trainer.train_dataset)))
    fraction = masked_fraction(collate(trainer, first))
    if fraction == 0:
        # TRL masks prompts during dataset preparation; if an upgrade changed that, the
        # run would silently learn to write prompts.
        raise RuntimeError("the SFT collator masked no prompt tokens: the loss would cover "
                           "the prompts too")
    if isinstance(resume_from_checkpoint, os.PathLike):
        resume_from_checkpoint = os.fspath(resume_from_checkpoint)
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    state = trainer.state
    metrics: dict[str, Any] = {
        "train_loss": result.training_loss,
        "global_step": state.global_step,
        "epoch": state.epoch,
        "train_runtime": result.metrics.get("train_runtime"),
        "masked_fraction": fraction,
    }
    if trainer.eval_dataset is not None:
        evals = [entry for entry in state.log_history if "eval_loss" in entry]
        if config.eval_on_start and evals and evals[0].get("step") == 0:
            metrics["eval_loss_start"] = evals[0]["eval_loss"]
        # The last periodic evaluation is of the final weights only when it fell on the
        # last step.
        if evals and evals[-1].get("step") == state.global_step:
            metrics["eval_loss"] = evals[-1]["eval_loss"]
        else:
            metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    save_sft_model(trainer, config, metrics)
    return metrics


def save_sft_model(trainer: SFTTrainer, config: SFTRunConfig, metrics: Mapping[str, Any]) -> Path:
    """Save the trained model (LoRA merged in), tokenizer and training record to output_dir."""
    out = Path(config.output_dir)
    if not trainer.is_world_process_zero():
        return out
    model = trainer.accelerator.unwrap_model(trainer.model)
    if config.use_lora:
        # A registered model is a whole model: the adapters are folded into the weights.
        model = model.merge_and_unload()
    record = {
        "kind": "sft",
        "base_model": config.model_path,
        "config": config.to_dict(),
        "metrics": dict(metrics),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__},
    }
    # save_pretrained rather than trainer.save_model, which also pickles the training
    # arguments (training_args.bin) into the model folder.
    return save_final_model(out, model, trainer.processing_class, record)
