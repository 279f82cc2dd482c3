"""Configuration of Laoshi's K-way reward-model training (``training.reward_trainer``).

A plain dataclass, not a ``TrainingArguments`` subclass as in TRL: a run's config is
validated when the run is created (``training.services.runs.validate_config``), in the
web process, which must not import torch or probe devices. ``training_arguments()`` turns
it into transformers' ``TrainingArguments`` inside the training process.

Defaults follow InstructGPT's reward model (section C.2 of the paper) where they apply
to any model size: one epoch (the RM overfits after one), a cosine schedule, a learning
rate of 9e-6. Its batch of 64 prompts is ``per_device_prompts`` x accumulation x devices.
"""

from dataclasses import dataclass, field
from typing import Any

from training.config_base import CHECKPOINTS_DIR, RunConfig, check_types, help_text

RANKINGS = ("consensus", "per_annotator")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass(kw_only=True)
class RewardConfig(RunConfig):
    """Settings of one reward-model run: model, data, then training."""

    # Model
    model_path: str = field(metadata=help_text(
        "Directory or hub id of the checkpoint to start from (the SFT model, usually a causal "
        "LM): loaded with AutoModelForSequenceClassification, num_labels=1, so its body is "
        "kept and a new scalar head is added."))
    max_length: int = field(default=512, metadata=help_text(
        "Most tokens of prompt plus response. Longer texts lose tokens on the left (the "
        "start of the prompt), since the reward is read at the last token."))
    bf16: bool | None = field(default=None, metadata=help_text(
        "bfloat16 mixed precision. None: on when a CUDA GPU that supports it is present, "
        "off on CPU."))
    gradient_checkpointing: bool = field(default=False, metadata=help_text(
        "Recompute activations in the backward pass: less memory, about 20-30% slower."))
    share_prompt: bool = field(default=True, metadata=help_text(
        "Run the tokens the K sequences of a prompt share (the prompt) once, and each "
        "response on its key/value cache: the same rewards for less compute. Used on one "
        "process without gradient checkpointing, for models with a 'score' head, after a "
        "check that it matches running each sequence in full."))
    disable_dropout: bool = field(default=True, metadata=help_text(
        "Turn the model's dropout off: the K rewards of a prompt are compared with each "
        "other, and dropout would add independent noise to each (TRL does the same)."))

    # Data
    ranking: str = field(default="consensus", metadata=help_text(
        "Which ranking of a rankings row to train on: 'consensus' (the row's consensus "
        "ranking, one element per task) or 'per_annotator' (each annotator's ranking is an "
        "element of its own, as InstructGPT trains on every labeler's comparisons)."))
    margin: bool = field(default=False, metadata=help_text(
        "Subtract a margin from each pair's reward difference, as TRL's RewardTrainer does: "
        "max(0, rating of the better - rating of the worse) from the annotator's Likert "
        "ratings (with 'consensus', the mean rating over annotators); 0 where either rating "
        "is missing."))

    # Training
    output_dir: str = field(metadata=help_text(
        "Where the final model is written (the directory itself); resumable checkpoints "
        f"go to its '{CHECKPOINTS_DIR}' folder."))
    per_device_prompts: int = field(default=8, metadata=help_text(
        "Prompts per batch on each device. One prompt brings all its K ranked responses, "
        "so a batch runs sum(K) sequences through the model."))
    gradient_accumulation_steps: int = field(default=1, metadata=help_text(
        "Batches whose gradients are added up before each optimizer step."))
    learning_rate: float = field(default=9e-6, metadata=help_text(
        "Peak learning rate of AdamW (InstructGPT's RM: 9e-6)."))
    lr_scheduler_type: str = field(default="cosine", metadata=help_text(
        f"Learning-rate schedule after warm-up: one of {', '.join(SCHEDULERS)}."))
    num_train_epochs: float = field(default=1.0, metadata=help_text(
        "Passes over the training prompts (InstructGPT: 1; more overfits)."))
    max_steps: int = field(default=-1, metadata=help_text(
        "Stop after this many optimizer steps; -1 runs num_train_epochs."))
    weight_decay: float = field(default=0.0, metadata=help_text("AdamW weight decay."))
    warmup_ratio: float = field(default=0.0, metadata=help_text(
        "Share of the optimizer steps spent warming the learning rate up from 0, in [0, 1)."))
    max_grad_norm: float = field(default=1.0, metadata=help_text(
        "Clip the gradient to this norm; 0 turns clipping off."))
    eval_steps: int | None = field(default=None, metadata=help_text(
        "Evaluate on the held-out rankings every this many steps; None evaluates only "
        "at the end (always done when there are held-out rankings)."))
    logging_steps: int = field(default=10, metadata=help_text(
        "Log loss, pairwise accuracy and rewards every this many steps."))
    save_steps: int = field(default=500, metadata=help_text(
        "Write a checkpoint (to resume from) every this many steps."))
    save_total_limit: int | None = field(default=2, metadata=help_text(
        "Keep at most this many checkpoints (the oldest go first); None keeps all."))
    seed: int = field(default=42, metadata=help_text(
        "Seed of the scalar head's initialisation, the data order and dropout."))
    bias_max_responses: int = field(default=4096, metadata=help_text(
        "At most this many responses (a seeded random sample) are scored for the reward "
        "bias stored with the model."))

    def __post_init__(self):
        check_types(self)
        if not self.model_path.strip():
            raise ValueError("model_path must name a checkpoint directory or hub id")
        if not self.output_dir.strip():
            raise ValueError("output_dir must be a directory path")
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {', '.join(RANKINGS)}, "
                             f"not {self.ranking!r}")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise ValueError(f"lr_scheduler_type must be one of {', '.join(SCHEDULERS)}, "
                             f"not {self.lr_scheduler_type!r}")
        for name in ("max_length", "per_device_prompts", "gradient_accumulation_steps",
                     "logging_steps", "save_steps", "bias_max_responses"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.max_length < 2:
            raise ValueError("max_length must leave room for a prompt and a response (>= 2)")
        for name in ("eval_steps", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or None, not {value}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), not {self.learning_rate}")
        if self.num_train_epochs <= 0 and self.max_steps < 1:
            raise ValueError("num_train_epochs must be > 0 (or max_steps set)")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (use epochs) or >= 1, not {self.max_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, not {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), not {self.warmup_ratio}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0, not {self.max_grad_norm}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, not {self.seed}")

    def training_arguments(self, *, evaluate: bool, **overrides: Any):
        """Return transformers' TrainingArguments for this config.

        ``evaluate``: whether there are held-out rankings (periodic evaluation and the best
        metric need them). ``overrides`` go to TrainingArguments as they are, last.
        """
        import torch
        from transformers import TrainingArguments

        periodic = evaluate and self.eval_steps is not None
        kwargs = dict(
            output_dir=str(self.checkpoint_dir),
            per_device_train_batch_size=self.per_device_prompts,
            per_device_eval_batch_size=self.per_device_prompts,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler_type,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            weight_decay=self.weight_decay,
            # transformers 5: a float below 1 is a ratio of the total steps.
            warmup_steps=self.warmup_ratio,
            max_grad_norm=self.max_grad_norm,
            eval_strategy="steps" if periodic else "no",
            eval_steps=self.eval_steps if periodic else None,
            logging_strategy="steps",
            logging_steps=self.logging_steps,
            save_strategy="steps",
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            # The best held-out accuracy goes into trainer_state.json of every checkpoint.
            metric_for_best_model="eval_accuracy" if evaluate else None,
            greater_is_better=True if evaluate else None,
            seed=self.seed,
            data_seed=self.seed,
            bf16=self.use_bf16(),
            activation_checkpointing=self.gradient_checkpointing,
            # Pinned memory only helps copies to a GPU (and warns without one).
            dataloader_pin_memory=torch.cuda.is_available(),
            # The collator needs every field of an element; nothing is a datasets column.
            remove_unused_columns=False,
            label_names=[],
            report_to="none",
            disable_tqdm=True,
        )
        if kwargs["bf16"] and not torch.accelerator.is_available():
            # transformers takes bf16 without a GPU only when told to stay on the CPU.
            kwargs["use_cpu"] = True
        kwargs.update(overrides)
        return TrainingArguments(**kwargs)
