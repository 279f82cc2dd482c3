"""Pure helpers for prompt text: normalization, hashing, splits (no Django import)."""

import hashlib
import re
import unicodedata

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Return text folded for duplicate detection: NFKC, casefolded, single spaces."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def prompt_plain_text(text: str, messages: list[dict] | None) -> str:
    """Return the text a prompt is compared by: its text, or every turn of a chat."""
    if messages:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return text


def content_hash(normalized: str) -> str:
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def prefix_hash(normalized: str, prefix_chars: int) -> str:
    """Return the hash of the first ``prefix_chars`` characters, or "" when shorter/off."""
    if prefix_chars <= 0 or len(normalized) < prefix_chars:
        return ""
    return content_hash(normalized[:prefix_chars])


def split_for(key: str, train_pct: int, valid_pct: int) -> str:
    """Return "train", "valid" or "test" for a user id, the same for every call.

    The split depends only on the key (the external user id), so one user's prompts
    never straddle splits, in any project.
    """
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < train_pct:
        return "train"
    if bucket < train_pct + valid_pct:
        return "valid"
    return "test"


def in_sample(key: str, rate: float) -> bool:
    """Return whether a key falls in a deterministic sample of the given share."""
    if rate <= 0:
        return False
    bucket = int.from_bytes(hashlib.sha256(b"sample:" + key.encode("utf-8")).digest()[:8], "big")
    return (bucket % 10_000) < rate * 10_000
