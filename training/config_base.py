"""What the run configs (SFT, reward model, PPO) share. No torch at import: the web
process builds and validates configs."""

import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, get_args

# Resumable checkpoints go to this folder of a run's output directory, so that the final
# model files sit alone at its top.
CHECKPOINTS_DIR = "checkpoints"


def help_text(text: str) -> dict[str, str]:
    """Return a dataclass field's metadata: its help text."""
    return {"help": text}


class RunConfig:
    """Methods of a run config dataclass (which has ``output_dir`` and ``bf16``)."""

    output_dir: str
    bf16: bool | None

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-ready values (what a checkpoint records)."""
        return asdict(self)

    @property
    def checkpoint_dir(self) -> Path:
        """Return the folder the run's resumable checkpoints are saved in."""
        return Path(self.output_dir) / CHECKPOINTS_DIR

    def use_bf16(self) -> bool:
        """Return whether training runs in bf16: the setting, or the device's support."""
        if self.bf16 is not None:
            return self.bf16
        import torch  # here, not at import: the web process validates configs without torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _accepts(kind: Any, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is type(None):
        return value is None
    return isinstance(value, kind)


def check_types(config: Any) -> None:
    """Raise TypeError for a value of the wrong type (configs arrive as JSON)."""
    for f in fields(config):
        value = getattr(config, f.name)
        kinds = get_args(f.type) or (f.type,)
        if not any(_accepts(kind, value) for kind in kinds):
            names = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            raise TypeError(f"{f.name} must be {names}, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, not {value!r}")
