"""Batched candidate generation: sampling settings, a backend protocol, a transformers backend.

Prompts are plain strings or chats (lists of {"role", "content"}). With a tokenizer that
has a chat template, both go through it: a plain string becomes a single user turn, since
an annotation prompt is a user's request and a chat model answers it best in its own
format (`wrap_plain_prompts=False` sends plain strings as raw text instead, for base
models). Without a chat template, plain strings are raw text and a chat is written out as
a "User: ... / Assistant:" transcript.
"""

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from .loading import load_causal_lm
from .sampling import SamplingSettings, _is_int

Prompt = str | list[dict]
# torch.manual_seed sets process-wide state, so two generations running at once in one
# process would draw from each other's random stream: they take turns. On CPU each one
# already uses every core, so little is lost.
_generate_lock = threading.Lock()


class Backend(Protocol):
    """What generates candidates: this transformers backend now, vLLM later."""

    tokens_generated: int

    def generate(self, prompts: Sequence[Prompt], settings: SamplingSettings, *, n: int = 1,
                 ignore_eos: bool = False) -> list[list[str]]:
        """Return n completions for each prompt, in prompt order."""
        ...


class TransformersBackend:
    """Generate with a transformers causal LM, in batches of prompts sorted by length."""

    def __init__(self, model_path, device=None, batch_size: int = 8, *,
                 wrap_plain_prompts: bool = True):
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, not {batch_size!r}")
        self.model, self.tokenizer = load_causal_lm(model_path, device=device)
        self.batch_size = batch_size
        self.wrap_plain_prompts = wrap_plain_prompts
        # New tokens produced, eos included, padding excluded: since creation, and by the
        # last generate() call.
        self.tokens_generated = 0
        self.last_tokens_generated = 0
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos or []))

    @property
    def has_chat_template(self) -> bool:
        """Return whether the tokenizer has a chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, prompt: Prompt) -> tuple[str, bool]:
        """Return the text the model sees for a prompt, and whether it is templated."""
        if isinstance(prompt, str):
            if not (self.has_chat_template and self.wrap_plain_prompts):
                return prompt, False
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = _checked_messages(prompt)
        if self.has_chat_template:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False)
            return text, True
        return _transcript(messages), False

    def encode(self, prompt: Prompt) -> list[int]:
        """Return the token ids of a prompt as the model sees it."""
        text, templated = self.render(prompt)
        # A rendered template already holds its special tokens (a BOS, say): adding them
        # again would double them. verbose=False: generate() truncates a prompt longer
        # than the model, so the tokenizer's warning about it would be noise.
        ids = self.tokenizer(text, add_special_tokens=not templated, verbose=False)["input_ids"]
        if not ids:
            start = self.tokenizer.bos_token_id
            ids = [start if start is not None else self.tokenizer.eos_token_id]
        return ids

    def generate(self, prompts: Sequence[Prompt], settings: SamplingSettings, *, n: int = 1,
                 ignore_eos: bool = False) -> list[list[str]]:
        """Return n completions for each prompt, in prompt order.

        The same prompts, settings and batch_size give the same completions on the same
        device and torch thread count. ignore_eos makes every completion exactly
        max_new_tokens long (for benchmarks).
        """
        if not _is_int(n) or n < 1:
            raise ValueError(f"n must be a whole number >= 1, not {n!r}")
        if isinstance(prompts, str | dict):
            raise ValueError("prompts must be a list of prompts")
        limit = self._prompt_limit(settings)
        encoded = [self.encode(prompt) for prompt in prompts]
        if limit:
            encoded = [ids[-limit:] for ids in encoded]
        rows = [(i, j, ids) for i, ids in enumerate(encoded) for j in range(n)]
        # Rows of similar length share a batch, so little compute goes into padding.
        rows.sort(key=lambda row: len(row[2]))
        results = [[""] * n for _ in prompts]
        with _generate_lock:
            tokens = 0
            for batch_index, start in enumerate(range(0, len(rows), self.batch_size)):
                batch = rows[start:start + self.batch_size]
                texts, count = self._generate_batch(
                    [ids for _, _, ids in batch], settings, batch_index, ignore_eos)
                for (i, j, _), text in zip(batch, texts, strict=True):
                    results[i][j] = text
                tokens += count
            self.last_tokens_generated = tokens
            self.tokens_generated += tokens
        return results

    def _prompt_limit(self, settings: SamplingSettings) -> int | None:
        """Return how many prompt tokens fit beside max_new_tokens, or None if unbounded."""
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if not positions:
            return None
        limit = positions - settings.max_new_tokens
        if limit < 1:
            raise ValueError(f"max_new_tokens ({settings.max_new_tokens}) leaves no room for "
                             f"a prompt in this model's {positions} positions")
        # The end of a prompt is kept: it holds the question and the generation prompt.
        return limit

    @torch.inference_mode()
    def _generate_batch(self, batch: list[list[int]], settings: SamplingSettings,
                        batch_index: int, ignore_eos: bool) -> tuple[list[str], int]:
        """Generate for one batch of token id lists; return the texts and new-token count."""
        pad = self.tokenizer.pad_token_id
        # Left padding: each prompt ends at the last column, where generation starts.
        input_ids, attention_mask = pad_rows(batch, pad, left=True)
        width = input_ids.shape[1]
        options = {"max_new_tokens": settings.max_new_tokens, "use_cache": True,
                   "pad_token_id": pad, "do_sample": not settings.greedy}
        if not settings.greedy:
            # top_k=0 turns off transformers' default top-k of 50: the settings say
            # temperature and top_p, nothing else.
            options.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        if ignore_eos:
            options["min_new_tokens"] = settings.max_new_tokens
        torch.manual_seed((settings.seed * 1_000_003 + batch_index) % 2**63)
        device = self.model.device
        output = self.model.generate(input_ids=input_ids.to(device),
                                     attention_mask=attention_mask.to(device), **options)
        new = output[:, width:].cpu()
        texts = [text.strip() for text in
                 self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return texts, _count_new_tokens(new, self._eos_ids)


def pad_rows(rows: Sequence[Sequence[int]], pad: int, *,
             left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return token id lists as one [B, T] batch and its attention mask, padded on the left
    (prompts to continue) or on the right (whole sequences: positions stay 0..n-1)."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        where = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, where] = torch.tensor(row, dtype=torch.long)
        attention[i, where] = 1
    return input_ids, attention


def until_first_eos(tokens: torch.Tensor, eos_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Return [B, T] True on generated tokens up to and including each row's first eos."""
    eos = torch.as_tensor(eos_ids, dtype=tokens.dtype, device=tokens.device)
    if not eos.numel():
        return torch.ones_like(tokens, dtype=torch.bool)
    is_eos = torch.isin(tokens, eos).long()
    return (is_eos.cumsum(dim=1) - is_eos) == 0


def _count_new_tokens(new: torch.Tensor, eos_ids: torch.Tensor) -> int:
    """Count generated tokens up to and including each row's first eos; the rest is padding."""
    return int(until_first_eos(new, eos_ids).sum())


def _checked_messages(prompt) -> list[dict]:
    """Return a chat prompt as a list of {role, content} dicts, or raise ValueError."""
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("a prompt must be a string or a non-empty list of messages")
    for message in prompt:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise ValueError(f"each message must be a {{role, content}} object, not {message!r}")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _transcript(messages: list[dict]) -> str:
    """Write a chat as plain text for a model without a chat template."""
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


@dataclass
class DistinctCandidates:
    """Candidates per prompt, and those that stayed empty or duplicated after resampling."""

    candidates: list[list[str]]
    # prompt index -> candidate indices still empty or equal to an earlier candidate
    not_distinct: dict[int, list[int]] = field(default_factory=dict)
    resampled: int = 0


def normalise(text: str) -> str:
    """Return text with runs of whitespace collapsed, for comparing candidates."""
    return " ".join(text.split())


def generate_distinct(backend: Backend, prompts: Sequence[Prompt], settings: SamplingSettings,
                      n: int, *, max_tries: int = 3) -> DistinctCandidates:
    """Generate n candidates per prompt, resampling empty or duplicate ones up to max_tries times.

    Candidates that are still empty or duplicated are kept and listed in not_distinct.
    """
    if not _is_int(max_tries) or max_tries < 0:
        raise ValueError(f"max_tries must be a whole number >= 0, not {max_tries!r}")
    candidates = backend.generate(prompts, settings, n=n)
    bad = _not_distinct(candidates)
    resampled = 0
    # Greedy decoding gives the same text for any seed, so resampling cannot help.
    tries = 0 if settings.greedy else max_tries
    for attempt in range(1, tries + 1):
        if not bad:
            break
        slots = [(i, j) for i, js in sorted(bad.items()) for j in js]
        # A new seed per attempt, far from the first one's batches.
        retry = replace(settings, seed=(settings.seed + attempt * 7_919_113) % 2**62)
        fresh = backend.generate([prompts[i] for i, _ in slots], retry, n=1)
        for (i, j), (text,) in zip(slots, fresh, strict=True):
            candidates[i][j] = text
        resampled += len(slots)
        bad = _not_distinct(candidates)
    return DistinctCandidates(candidates=candidates, not_distinct=bad, resampled=resampled)


def _not_distinct(candidates: list[list[str]]) -> dict[int, list[int]]:
    """Return, per prompt, the candidates that are empty or repeat an earlier one."""
    bad = {}
    for i, texts in enumerate(candidates):
        seen, repeats = set(), []
        for j, text in enumerate(texts):
            key = normalise(text)
            if not key or key in seen:
                repeats.append(j)
            seen.add(key)
        if repeats:
            bad[i] = repeats
    return bad
