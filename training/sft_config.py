"""The settings of one SFT run, validated up front, and their translation to TRL's SFTConfig.

No Django import, and no torch or TRL import until ``to_trl``: a form or an API
serializer can build and validate a config on a web host without loading either.
``training.sft.train_sft`` runs it.
"""

import math
import os
from dataclasses import dataclass, field
from typing import Any

from training.config_base import CHECKPOINTS_DIR, RunConfig

LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass(kw_only=True)
class SFTRunConfig(RunConfig):
    """Supervised fine-tuning of a causal LM on demonstrations (loss on responses only)."""

    # Model
    model_path: str = field(metadata={
        "help": "Directory of the model to fine-tune: a save_pretrained folder with "
                "safetensors weights and a tokenizer (a chat template for chat data)."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass: less memory, about 20% "
                "slower. TRL turns it on by default; here it is opt-in for large models."})
    use_lora: bool = field(default=False, metadata={
        "help": "Train low-rank adapters instead of every weight, then merge them into "
                "the saved model. Needs the peft library."})
    lora_r: int = field(default=16, metadata={"help": "Rank of the LoRA adapters."})
    lora_alpha: float = field(default=32.0, metadata={
        "help": "LoRA scaling: the adapter's update is multiplied by lora_alpha / lora_r."})
    lora_dropout: float = field(default=0.05, metadata={
        "help": "Dropout on the adapters' input, in [0, 1)."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Names of the modules to adapt (e.g. ['q_proj', 'v_proj']); None lets "
                "peft pick the usual ones for the architecture. Never 'lm_head'."})

    # Data
    max_length: int = field(default=1024, metadata={
        "help": "Tokens per example (prompt + response); longer examples are cut at the "
                "end, and an example whose response is cut away entirely is dropped."})

    # Training
    output_dir: str = field(metadata={
        "help": f"Where the final model, tokenizer and training record are saved; "
                f"checkpoints go to its '{CHECKPOINTS_DIR}' folder."})
    learning_rate: float = field(default=2e-5, metadata={
        "help": "Peak learning rate of AdamW."})
    num_train_epochs: float = field(default=3.0, metadata={
        "help": "Passes over the training data (ignored when max_steps is set)."})
    max_steps: int | None = field(default=None, metadata={
        "help": "Optimizer steps to train for; overrides num_train_epochs. Resuming a "
                "run continues up to this step."})
    per_device_train_batch_size: int = field(default=8, metadata={
        "help": "Examples per device per forward pass (also used for evaluation)."})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "Forward passes per optimizer step: the effective batch is this times "
                "per_device_train_batch_size times the number of devices."})
    lr_scheduler_type: str = field(default="cosine", metadata={
        "help": f"Learning-rate schedule after warmup: one of {', '.join(LR_SCHEDULERS)}."})
    warmup_ratio: float = field(default=0.03, metadata={
        "help": "Fraction of the total steps spent warming the learning rate up from 0, "
                "in [0, 1)."})
    weight_decay: float = field(default=0.0, metadata={
        "help": "AdamW weight decay (not applied to biases and norms)."})
    logging_steps: int = field(default=10, metadata={
        "help": "Log the training loss every this many optimizer steps (and at step 1)."})
    eval_steps: int | None = field(default=None, metadata={
        "help": "Evaluate on the validation data every this many steps; None means every "
                "logging_steps. The final model is always evaluated when there is "
                "validation data."})
    eval_on_start: bool = field(default=False, metadata={
        "help": "Also evaluate before the first step, for a baseline validation loss."})
    save_steps: int = field(default=500, metadata={
        "help": "Save a resumable checkpoint every this many optimizer steps."})
    save_total_limit: int | None = field(default=2, metadata={
        "help": "Checkpoints to keep (oldest deleted first); None keeps them all."})
    seed: int = field(default=42, metadata={
        "help": "Seed of the adapter initialisation, data order and dropout."})
    bf16: bool | None = field(default=None, metadata={
        "help": "bfloat16 mixed precision. None: on when the CUDA GPU supports it, off "
                "otherwise; never on CPU (True there is an error)."})

    def __post_init__(self) -> None:
        for name in ("model_path", "output_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))
        if isinstance(self.lora_target_modules, tuple):
            self.lora_target_modules = list(self.lora_target_modules)
        errors = self._errors()
        if errors:
            raise ValueError("invalid SFT config: " + "; ".join(errors))

    def _errors(self) -> list[str]:
        errors = []

        def check(ok: bool, message: str) -> None:
            if not ok:
                errors.append(message)

        for name in ("model_path", "output_dir"):
            value = getattr(self, name)
            check(isinstance(value, str) and value.strip() != "",
                  f"{name} must be a non-empty path, not {value!r}")
        for name in ("gradient_checkpointing", "use_lora", "eval_on_start"):
            check(isinstance(getattr(self, name), bool),
                  f"{name} must be true or false, not {getattr(self, name)!r}")
        check(self.bf16 is None or isinstance(self.bf16, bool),
              f"bf16 must be true, false or None (auto), not {self.bf16!r}")

        check(_whole(self.max_length, 1), f"max_length must be a whole number >= 1, "
                                          f"not {self.max_length!r}")
        check(_number(self.learning_rate) and self.learning_rate > 0,
              f"learning_rate must be a number > 0, not {self.learning_rate!r}")
        check(_number(self.num_train_epochs) and self.num_train_epochs > 0,
              f"num_train_epochs must be a number > 0, not {self.num_train_epochs!r}")
        check(self.max_steps is None or _whole(self.max_steps, 1),
              f"max_steps must be None or a whole number >= 1, not {self.max_steps!r}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps",
                     "logging_steps", "save_steps"):
            check(_whole(getattr(self, name), 1),
                  f"{name} must be a whole number >= 1, not {getattr(self, name)!r}")
        for name in ("eval_steps", "save_total_limit"):
            value = getattr(self, name)
            check(value is None or _whole(value, 1),
                  f"{name} must be None or a whole number >= 1, not {value!r}")
        check(self.lr_scheduler_type in LR_SCHEDULERS,
              f"lr_scheduler_type must be one of {', '.join(LR_SCHEDULERS)}, "
              f"not {self.lr_scheduler_type!r}")
        # transformers reads a warmup in [0, 1) as a ratio and 1 or more as a step count.
        check(_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1,
              f"warmup_ratio must be in [0, 1), not {self.warmup_ratio!r}")
        check(_number(self.weight_decay) and self.weight_decay >= 0,
              f"weight_decay must be a number >= 0, not {self.weight_decay!r}")
        check(_whole(self.seed, 0), f"seed must be a whole number >= 0, not {self.seed!r}")

        check(_whole(self.lora_r, 1), f"lora_r must be a whole number >= 1, not {self.lora_r!r}")
        check(_number(self.lora_alpha) and self.lora_alpha > 0,
              f"lora_alpha must be a number > 0, not {self.lora_alpha!r}")
        check(_number(self.lora_dropout) and 0 <= self.lora_dropout < 1,
              f"lora_dropout must be in [0, 1), not {self.lora_dropout!r}")
        modules = self.lora_target_modules
        if modules is not None:
            if not isinstance(modules, list) or not modules or not all(
                    isinstance(m, str) and m.strip() for m in modules):
                errors.append(f"lora_target_modules must be None or a non-empty list of "
                              f"module names, not {modules!r}")
            elif "lm_head" in modules:
                # TRL computes log-probabilities from lm_head.weight directly: an adapter
                # there would never be trained.
                errors.append("lora_target_modules cannot include 'lm_head'")
        return errors

    def to_trl(self, *, evaluate: bool = False):
        """Return the trl.SFTConfig of this run; evaluate: there is validation data.

        Raise ValueError when bf16 is forced on a machine without a bfloat16 CUDA GPU.
        """
        import torch
        from trl import SFTConfig

        cuda = torch.cuda.is_available()
        bf16_ok = cuda and torch.cuda.is_bf16_supported()
        if self.bf16 and not bf16_ok:
            raise ValueError(
                "bf16=True needs a CUDA GPU that supports bfloat16, and this machine has "
                + ("a GPU without it" if cuda else "none") + ": set bf16 to None (auto) or False")
        return SFTConfig(
            output_dir=str(self.checkpoint_dir),
            # Loss on the demonstration only: prompt tokens get label -100. This is what
            # TRL does for prompt/completion data anyway; stating it keeps it so.
            completion_only_loss=True,
            assistant_only_loss=False,
            packing=False,
            max_length=self.max_length,
            # transformers 5.23 renamed gradient_checkpointing (a deprecated alias now, which
            # TRL sets to True by default): naming the new field overrides both, silently.
            activation_checkpointing=self.gradient_checkpointing,
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps if self.max_steps is not None else -1,
            per_device_train_batch_size=self.per_device_train_batch_size,
            per_device_eval_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            lr_scheduler_type=self.lr_scheduler_type,
            # transformers 5 has no warmup_ratio: a warmup_steps below 1 is the ratio.
            warmup_steps=float(self.warmup_ratio),
            weight_decay=self.weight_decay,
            logging_steps=self.logging_steps,
            logging_first_step=True,
            eval_strategy="steps" if evaluate else "no",
            eval_steps=self.eval_steps if evaluate else None,
            eval_on_start=evaluate and self.eval_on_start,
            save_strategy="steps",
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            seed=self.seed,
            # TRL's default is bf16=True everywhere, CPU included: always say which.
            bf16=bool(self.bf16) if self.bf16 is not None else bf16_ok,
            fp16=False,
            use_cpu=not cuda,
            report_to="none",
            # Progress goes to callbacks (the run's heartbeat), not to a tqdm bar in a log.
            disable_tqdm=True,
        )


def _whole(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))
