"""The tiny built-in model: deterministic builds that load like any transformers model."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelhub.ml.tiny import (
    TRAINING_RECORD,
    build_tiny_model,
    demo_prompts,
    demo_texts,
    tiny_test_model,
)

TINY = {"vocab_size": 400, "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 128,
        "seq_len": 32, "batch_size": 8}


def _weights(path):
    return load_file(path / "model.safetensors")


def test_the_same_seed_builds_the_same_model(tiny_model, tmp_path):
    again = tiny_test_model(tmp_path / "again", seed=0)
    other = tiny_test_model(tmp_path / "other", seed=1)

    first, second, third = _weights(tiny_model), _weights(again), _weights(other)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], third[name]) for name in first)
    assert (tiny_model / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_it_loads_with_from_pretrained(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    assert model.config.model_type == "gpt2"
    assert model.config.n_layer == 2 and model.config.n_embd == 64
    assert tokenizer.padding_side == "left"
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}],
                                         add_generation_prompt=True, tokenize=False)
    assert text == "<|user|>\n你好<|end|>\n<|assistant|>\n"
    # Byte level: Chinese and English round-trip without an unknown token.
    sample = "Hello, 世界! 红烧肉"
    assert tokenizer.decode(tokenizer(sample)["input_ids"]) == sample


def test_its_loss_goes_down_in_a_few_dozen_steps(tmp_path):
    texts = demo_texts()[:40]

    result = build_tiny_model(tmp_path / "m", texts, seed=3, steps=30, learning_rate=3e-3,
                              **TINY)

    assert result["steps"] == 30
    assert result["loss_last"] < result["loss_first"] - 0.5
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert result["parameter_count"] == sum(p.numel() for p in model.parameters())
    assert result["vocab_size"] == len(AutoTokenizer.from_pretrained(tmp_path / "m"))
    # The parameters moved away from a fresh initialisation with the same seed.
    build_tiny_model(tmp_path / "untrained", texts, seed=3, steps=0, **TINY)
    before = _weights(tmp_path / "untrained")
    after = _weights(tmp_path / "m")
    assert all(not torch.equal(before[name], after[name]) for name in before)


def test_it_writes_a_training_record_and_no_temporary_directory(tmp_path):
    build_tiny_model(tmp_path / "m", ["a short text"] * 5, steps=2, **TINY)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (tmp_path / "m" / TRAINING_RECORD).is_file()
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert not list((tmp_path / "m").glob("*.bin"))


def test_it_refuses_to_overwrite_unless_asked(tmp_path):
    build_tiny_model(tmp_path / "m", ["one text"], steps=1, **TINY)

    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path / "m", ["one text"], steps=1, **TINY)
    build_tiny_model(tmp_path / "m", ["another text"], steps=1, overwrite=True, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_max_seconds_stops_training(tmp_path):
    result = build_tiny_model(tmp_path / "m", ["one text"], steps=1000, max_seconds=0, **TINY)

    assert result["steps"] == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_demo_texts_hold_prompts_chats_and_completions_in_two_languages():
    texts = demo_texts()

    assert any("leaking kitchen faucet" in text for text in texts)  # a prompt
    assert any(text.startswith("Sure! Here's a quieter version") for text in texts)  # completion
    assert any("红烧肉" in text for text in texts)  # a chat turn
    prompts = demo_prompts()
    assert any(isinstance(p, str) for p in prompts)
    assert any(isinstance(p, list) and p[0]["role"] == "user" for p in prompts)
