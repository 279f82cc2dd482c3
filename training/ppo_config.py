"""Configuration of PPO-ptx (``training.ppo``): InstructGPT's step 3.

A plain dataclass like ``RewardConfig``: validated in the web process when a run is
created, without torch. Defaults follow InstructGPT (appendix C.3/C.4) where they make
sense at small scale: KL coefficient beta 0.02, clip range 0.2, one inner epoch, discount
1, a value model initialised from the reward model, the pretraining-mix weight gamma as
in their PPO-ptx models (27.8 there, on a loss per pretraining token; it is 0 here unless
a pretraining set is given).

One PPO step: sample ``rollout_prompts`` prompts, generate one response each with the
policy, score them with the reward model (less its bias, so demonstrations score about
0), shape the rewards with the per-token KL to the frozen SFT model, compute advantages
with GAE, then ``ppo_epochs`` passes of clipped policy and value updates in minibatches
of ``mini_batch_prompts``, each with a pretraining-mix batch when gamma > 0.
"""

from dataclasses import dataclass, field

from training.config_base import CHECKPOINTS_DIR, RunConfig, check_types, help_text


@dataclass(kw_only=True)
class PPOConfig(RunConfig):
    """Settings of one PPO-ptx run: model, data, then training."""

    # Model
    model_path: str = field(metadata=help_text(
        "The SFT model: the policy starts from it and a frozen copy of it is the KL "
        "reference."))
    reward_model_path: str = field(metadata=help_text(
        "The reward model (a sequence classifier with one output). Its stored bias "
        "(laoshi_reward_bias) is subtracted from every score."))
    value_model_path: str | None = field(default=None, metadata=help_text(
        "Where the value model starts; None: the reward model, as in InstructGPT. It must "
        "share the policy's tokenizer."))
    bf16: bool | None = field(default=None, metadata=help_text(
        "bfloat16 mixed precision. None: on when a CUDA GPU that supports it is present, "
        "off on CPU."))
    gradient_checkpointing: bool = field(default=False, metadata=help_text(
        "Recompute the policy's and value model's activations in the backward pass: less "
        "memory, slower."))

    # Data
    ptx_data_path: str | None = field(default=None, metadata=help_text(
        "Pretraining-mix data: an SFT snapshot's JSONL (prompt and completion are joined "
        "into one text) or a JSONL of {\"text\": ...} lines. None: plain PPO (no ptx term)."))
    max_prompt_length: int = field(default=256, metadata=help_text(
        "Prompt tokens kept (the end of a longer prompt is kept: it holds the question)."))
    response_length: int = field(default=64, metadata=help_text(
        "Most tokens the policy writes per response; generation stops earlier at the "
        "end-of-sequence token."))
    temperature: float = field(default=1.0, metadata=help_text(
        "Sampling temperature of the rollouts (1.0: the policy's own distribution, which "
        "the KL and the ratios assume)."))
    ptx_length: int = field(default=256, metadata=help_text(
        "Tokens per pretraining-mix text (longer ones are cut at the end)."))
    missing_eos_penalty: float | None = field(default=None, metadata=help_text(
        "Subtract this from the score of a response that hit response_length without "
        "ending; None: no penalty."))

    # Training
    output_dir: str = field(metadata=help_text(
        f"Where the final policy is saved; resumable checkpoints go to its "
        f"'{CHECKPOINTS_DIR}' folder."))
    max_steps: int = field(default=200, metadata=help_text(
        "PPO steps (one rollout batch and its updates each); the episodes are max_steps "
        "times rollout_prompts."))
    rollout_prompts: int = field(default=16, metadata=help_text(
        "Prompts sampled (one response each) per PPO step."))
    mini_batch_prompts: int = field(default=8, metadata=help_text(
        "Rollouts per optimizer step within a PPO step; must divide rollout_prompts."))
    ppo_epochs: int = field(default=1, metadata=help_text(
        "Passes over each rollout batch (InstructGPT: 1)."))
    learning_rate: float = field(default=1e-5, metadata=help_text(
        "AdamW learning rate of the policy (constant)."))
    value_learning_rate: float | None = field(default=None, metadata=help_text(
        "AdamW learning rate of the value model; None: the policy's."))
    kl_coef: float = field(default=0.02, metadata=help_text(
        "beta: the per-token KL penalty to the SFT model (InstructGPT: 0.02)."))
    ptx_coef: float = field(default=27.8, metadata=help_text(
        "gamma: the weight of the pretraining-mix loss, a mean next-token loss per token "
        "(InstructGPT: 27.8, which holds the policy close to the pretraining data; "
        "DeepSpeed-Chat's example uses 1.5: lower it for more reward); only used with "
        "ptx_data_path."))
    ptx_batch_size: int = field(default=8, metadata=help_text(
        "Pretraining-mix texts per optimizer step."))
    cliprange: float = field(default=0.2, metadata=help_text(
        "Clip range of the policy ratio (InstructGPT: 0.2)."))
    cliprange_value: float = field(default=0.2, metadata=help_text(
        "Clip range of the value update around the rollout's values."))
    vf_coef: float = field(default=0.1, metadata=help_text(
        "Weight of the value loss beside the policy loss."))
    gamma: float = field(default=1.0, metadata=help_text(
        "Discount of GAE (InstructGPT: 1, the reward comes once at the end)."))
    lam: float = field(default=0.95, metadata=help_text("lambda of GAE, in [0, 1]."))
    whiten_rewards: bool = field(default=False, metadata=help_text(
        "Whiten the shaped rewards over each rollout batch before GAE."))
    max_grad_norm: float = field(default=1.0, metadata=help_text(
        "Clip each model's gradient to this norm; 0 turns clipping off."))
    eval_steps: int | None = field(default=None, metadata=help_text(
        "Score the policy's responses to the held-out prompts (the snapshot's valid "
        "split) every this many steps; None: at the end only. The same prompts and "
        "sampling seeds each time, so the held-out reward compares across steps."))
    eval_max_prompts: int = field(default=64, metadata=help_text(
        "At most this many held-out prompts per evaluation."))
    logging_steps: int = field(default=1, metadata=help_text(
        "Log the PPO figures every this many steps."))
    save_steps: int = field(default=50, metadata=help_text(
        "Write a checkpoint (to resume from) every this many steps."))
    save_total_limit: int | None = field(default=2, metadata=help_text(
        "Keep at most this many checkpoints (the oldest go first); None keeps all."))
    seed: int = field(default=42, metadata=help_text(
        "Seed of the prompt order, the sampling and the pretraining-mix batches: a step "
        "draws the same prompts and responses after a resume."))

    def __post_init__(self):
        check_types(self)
        for name in ("model_path", "reward_model_path", "output_dir"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} must be a non-empty path")
        for name in ("max_prompt_length", "response_length", "ptx_length", "max_steps",
                     "rollout_prompts", "mini_batch_prompts", "ppo_epochs", "ptx_batch_size",
                     "logging_steps", "save_steps", "eval_max_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.rollout_prompts % self.mini_batch_prompts:
            raise ValueError(f"mini_batch_prompts ({self.mini_batch_prompts}) must divide "
                             f"rollout_prompts ({self.rollout_prompts})")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"eval_steps must be at least 1 or None, not {self.eval_steps}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be at least 1 or None, "
                             f"not {self.save_total_limit}")
        for name in ("learning_rate", "value_learning_rate"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), not {value}")
        for name in ("kl_coef", "ptx_coef", "vf_coef", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        for name in ("cliprange", "cliprange_value", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, not {self.seed}")
