"""Sampling settings for candidate generation (no torch: web processes validate them)."""

import math
from dataclasses import asdict, dataclass, fields

MAX_NEW_TOKENS = 4096


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample: temperature 0 means greedy decoding."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self):
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) \
                or self.temperature < 0:
            raise ValueError(
                f"temperature must be a number >= 0 (0 means greedy), not {self.temperature!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], not {self.top_p!r}")
        if not _is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be a whole number from 1 to "
                             f"{MAX_NEW_TOKENS}, not {self.max_new_tokens!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a whole number >= 0, not {self.seed!r}")
        # Frozen: set the normalised values through object.__setattr__.
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))

    @property
    def greedy(self) -> bool:
        """Return whether these settings decode greedily."""
        return self.temperature == 0

    def to_dict(self) -> dict:
        """Return the settings as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SamplingSettings":
        """Build settings from a dict; missing keys take the defaults, unknown keys fail."""
        if not isinstance(data, dict):
            raise ValueError(f"sampling settings must be an object, not {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown sampling settings: {', '.join(map(str, unknown))}")
        return cls(**data)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
