"""A tiny built-in base model: a byte-level BPE tokenizer and a small GPT-2, trained on texts.

It lets the demo, the tests and the benchmarks generate candidates without downloading
anything. The default build (4 layers, 256 wide, about 4.3 million parameters) takes
under three minutes on two CPU cores and writes a normal `save_pretrained` directory
(safetensors weights, `tokenizer.json`, a chat template) that `AutoModelForCausalLM` and
`AutoTokenizer` load like any other.

    from modelhub.ml.tiny import build_tiny_model, demo_texts
    build_tiny_model("var/models/tiny", demo_texts())
"""

import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

DEMO_FILE = Path(__file__).resolve().parents[2] / "labeling" / "demo" / "demo_prompts.jsonl"
EOS = "<|endoftext|>"
# Chat markers: one special token per role and one that closes a turn, so the template
# below never depends on how BPE happened to split "User:".
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('roles must be system, user or assistant') }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)
TRAINING_RECORD = "laoshi_training.json"


def demo_prompts() -> list[str | list[dict]]:
    """Return the demo prompts in file order: plain strings, or chats as lists of messages."""
    prompts = []
    for record in _demo_records():
        messages = record.get("messages")
        prompt = record.get("prompt")
        prompts.append(messages if messages is not None else prompt)
    return prompts


def demo_texts() -> list[str]:
    """Return every text of the demo file: prompts, chat turns, completions, demonstrations."""
    texts = []
    for record in _demo_records():
        prompt = record.get("prompt")
        turns = record.get("messages") or (prompt if isinstance(prompt, list) else [])
        if isinstance(prompt, str):
            texts.append(prompt)
        texts.extend(turn["content"] for turn in turns)
        texts.extend(completion["text"] for completion in record.get("completions") or [])
        if record.get("demonstration"):
            texts.append(record["demonstration"])
    return [text for text in texts if text.strip()]


def _demo_records() -> list[dict]:
    with DEMO_FILE.open(encoding="utf-8") as stream:
        return [json.loads(line) for line in stream if line.strip()]


def train_tokenizer(texts: list[str], *, vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on texts and wrap it for transformers."""
    tokenizer = Tokenizer(models.BPE())
    # Byte level: any string, Chinese included, encodes without an unknown token.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        extra_special_tokens=CHAT_TOKENS,
        # Left padding: in a batch, every prompt then ends right where generation starts.
        padding_side="left",
        model_max_length=512,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_model(
    out_dir: str | os.PathLike,
    texts: list[str],
    *,
    seed: int = 0,
    steps: int = 200,
    max_seconds: float = 180,
    vocab_size: int = 4000,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 4,
    n_positions: int = 512,
    seq_len: int = 128,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    overwrite: bool = False,
) -> dict:
    """Train a tokenizer and a small GPT-2 on texts and save both to out_dir.

    Training stops after `steps` steps or `max_seconds`, whichever comes first. The same
    seed gives the same weights as long as `steps` is what stops it and the number of
    torch threads is the same (it changes the order of floating-point sums). out_dir must
    not exist unless overwrite is true.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True to replace it)")
    if not texts:
        raise ValueError("build_tiny_model needs at least one text")
    if seq_len > n_positions:
        raise ValueError(f"seq_len ({seq_len}) cannot exceed n_positions ({n_positions})")
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    tokenizer.model_max_length = n_positions
    stream = _token_stream(tokenizer, texts)
    if len(stream) <= seq_len:
        # Repeat a short corpus so that at least one full window exists.
        stream = stream.repeat(seq_len // len(stream) + 2)

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        # No dropout: the corpus is tiny and the point is text-like samples, fast.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # what GPT-2 uses anyway; naming it quiets a warning
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # A reply ends at the end of its turn as well as at the end of a text.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                            tokenizer.convert_tokens_to_ids("<|end|>")]
    losses = _pretrain(model, stream, seed=seed, steps=steps, max_seconds=max_seconds,
                       seq_len=seq_len, batch_size=batch_size, learning_rate=learning_rate,
                       started=started)
    model.eval()

    record = {
        "seed": seed,
        "steps": len(losses),
        "seconds": round(time.perf_counter() - started, 2),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "texts": len(texts),
        "tokens": len(stream),
        "args": {"steps": steps, "max_seconds": max_seconds, "vocab_size": vocab_size,
                 "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
                 "n_positions": n_positions, "seq_len": seq_len, "batch_size": batch_size,
                 "learning_rate": learning_rate},
    }
    _save_atomically(out_dir, model, tokenizer, record, overwrite=overwrite)
    return {
        # parameters() yields the tied input and output embedding once.
        "parameter_count": sum(p.numel() for p in model.parameters()),
        "steps": len(losses),
        "seconds": time.perf_counter() - started,
        "loss_first": record["loss_first"],
        "loss_last": record["loss_last"],
        "vocab_size": len(tokenizer),
    }


def tiny_test_model(out_dir: str | os.PathLike, *, seed: int = 0, steps: int = 4) -> Path:
    """Build a throwaway model for tests in a second or two: 2 layers, 64 wide."""
    texts = _short_texts()
    build_tiny_model(out_dir, texts, seed=seed, steps=steps, max_seconds=60, vocab_size=600,
                     n_layer=2, n_embd=64, n_head=2, n_positions=256, seq_len=64,
                     batch_size=8, learning_rate=3e-3)
    return Path(out_dir)


def _short_texts() -> list[str]:
    """Return a few hundred short strings cut from the demo texts, English and Chinese."""
    pieces = []
    for text in demo_texts():
        for line in text.splitlines():
            line = line.strip()
            if line:
                pieces.append(line[:120])
    return pieces[:400]


def _token_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """Return all texts as one stream of token ids, each text followed by the end token."""
    ids = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def _pretrain(model, stream, *, seed, steps, max_seconds, seq_len, batch_size, learning_rate,
              started) -> list[float]:
    """Run plain AdamW steps on random windows of the stream; return the loss of each step."""
    # The windows come from a generator of their own, so the data order depends only on
    # the seed, never on what else consumed the global random state.
    windows = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    offsets = torch.arange(seq_len)
    losses = []
    model.train()
    for _ in range(steps):
        if time.perf_counter() - started > max_seconds:
            break
        starts = torch.randint(0, len(stream) - seq_len + 1, (batch_size, 1), generator=windows)
        batch = stream[starts + offsets]
        loss = model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def _save_atomically(out_dir: Path, model, tokenizer, record: dict, *, overwrite: bool) -> None:
    """Write model, tokenizer and training record next to out_dir, then rename into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Same parent, so the rename is atomic and a reader never sees half a model.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        # transformers 5 always writes safetensors (safe_serialization is gone).
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if overwrite and out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
