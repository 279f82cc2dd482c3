"""The config dataclass of each run kind, and what forms, the API and the CLI show of them.

No torch here: the web process builds and validates configs. The paths of a config
(models, data, output) come from the run's inputs, never from the person launching it:
``PATH_FIELDS`` are filled in by ``config_for``.
"""

import dataclasses
import types
import typing
from typing import Any

from training.ppo_config import PPOConfig
from training.reward_config import RewardConfig
from training.sft_config import SFTRunConfig

CONFIGS: dict[str, type] = {"sft": SFTRunConfig, "reward": RewardConfig, "ppo": PPOConfig}

# Filled from the run (its parent model, reward model, snapshots and output directory).
PATH_FIELDS = frozenset({"model_path", "output_dir", "reward_model_path", "value_model_path",
                         "ptx_data_path"})

# The settings a person may set, by kind, in the order shown, in three groups.
GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "sft": {
        "model": ("gradient_checkpointing", "use_lora", "lora_r", "lora_alpha", "lora_dropout",
                  "lora_target_modules", "bf16"),
        "data": ("max_length",),
        "training": ("learning_rate", "num_train_epochs", "max_steps",
                     "per_device_train_batch_size", "gradient_accumulation_steps",
                     "lr_scheduler_type", "warmup_ratio", "weight_decay", "logging_steps",
                     "eval_steps", "eval_on_start", "save_steps", "save_total_limit", "seed"),
    },
    "reward": {
        "model": ("max_length", "bf16", "gradient_checkpointing", "share_prompt",
                  "disable_dropout"),
        "data": ("ranking", "margin"),
        "training": ("per_device_prompts", "gradient_accumulation_steps", "learning_rate",
                     "lr_scheduler_type", "num_train_epochs", "max_steps", "weight_decay",
                     "warmup_ratio", "max_grad_norm", "eval_steps", "logging_steps",
                     "save_steps", "save_total_limit", "seed", "bias_max_responses"),
    },
    "ppo": {
        "model": ("bf16", "gradient_checkpointing"),
        "data": ("max_prompt_length", "response_length", "temperature", "ptx_length",
                 "missing_eos_penalty"),
        "training": ("max_steps", "rollout_prompts", "mini_batch_prompts", "ppo_epochs",
                     "learning_rate", "value_learning_rate", "kl_coef", "ptx_coef",
                     "ptx_batch_size", "cliprange", "cliprange_value", "vf_coef", "gamma",
                     "lam", "whiten_rewards", "max_grad_norm", "eval_steps", "eval_max_prompts",
                     "logging_steps", "save_steps", "save_total_limit", "seed"),
    },
}


def config_for(kind: str, raw: dict, *, model_path: str, output_dir: str, **paths: Any):
    """Return the kind's config dataclass from a run's JSON config and its paths.

    Raise ValueError for an unknown kind, a path set in ``raw`` or an invalid value,
    TypeError for a value of the wrong type or an unknown setting.
    """
    if kind not in CONFIGS:
        raise ValueError(f"kind must be one of {', '.join(CONFIGS)}, not {kind!r}")
    if not isinstance(raw, dict):
        raise TypeError("the config must be an object of settings")
    given = sorted(PATH_FIELDS & set(raw))
    if given:
        raise ValueError(f"{', '.join(given)} come from the run's inputs and cannot be set")
    known = set(fields_of(kind))
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TypeError(f"unknown setting(s) for a {kind} run: {', '.join(unknown)}")
    if kind == "ppo":
        paths.setdefault("reward_model_path", "reward-model")  # validation without a model
    else:
        paths = {}
    return CONFIGS[kind](**raw, model_path=model_path, output_dir=output_dir, **paths)


def fields_of(kind: str) -> list[str]:
    """Return the settings of a kind a person may set, in display order."""
    return [name for group in GROUPS[kind].values() for name in group]


def _type_name(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType | typing._UnionGenericAlias) and len(args) == 1:
        annotation = args[0]
    origin = typing.get_origin(annotation)
    if origin is list:
        return "list"
    return getattr(annotation, "__name__", str(annotation))


def describe(kind: str) -> list[dict[str, Any]]:
    """Return each settable field of a kind: name, group, type, default, optional, help."""
    by_name = {f.name: f for f in dataclasses.fields(CONFIGS[kind])}
    described = []
    for group, names in GROUPS[kind].items():
        for name in names:
            f = by_name[name]
            described.append({
                "name": name, "group": group, "type": _type_name(f.type),
                "default": f.default if f.default is not dataclasses.MISSING else None,
                "optional": type(None) in typing.get_args(f.type),
                "help": f.metadata.get("help", ""),
            })
    return described
