"""Registration checks and loading: safetensors only, clear refusals, an LRU model cache."""

import json
import shutil
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, ViTConfig

from modelhub.ml import loading
from modelhub.ml.loading import (
    DownloadFailed,
    InvalidModel,
    UnsafeCheckpoint,
    cached_model_keys,
    convert_pickle_checkpoint,
    hub_download,
    inspect_checkpoint,
    load_causal_lm,
    pick_device,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture
def copy_of(tiny_model, tmp_path):
    """Return a function that copies the session's tiny model to a fresh directory."""
    def copy(name="copy"):
        return shutil.copytree(tiny_model, tmp_path / name)
    return copy


@pytest.fixture
def pickle_only(copy_of):
    """Return a model directory whose weights are only a torch.save'd state dict."""
    path = copy_of("pickled")
    state_dict = AutoModelForCausalLM.from_pretrained(path).state_dict()
    (path / "model.safetensors").unlink()
    torch.save(state_dict, path / "pytorch_model.bin")
    return path


def test_inspect_describes_a_valid_checkpoint(tiny_model):
    info = inspect_checkpoint(tiny_model)

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert info == {
        "architecture": "GPT2LMHeadModel",
        "model_type": "gpt2",
        "parameter_count": sum(p.numel() for p in model.parameters()),
        "is_chat": True,
        "vocab_size": 600,
    }


def test_inspect_counts_the_parameters_of_a_sharded_checkpoint(tiny_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_model / name, tmp_path / "sharded")

    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    info = inspect_checkpoint(tmp_path / "sharded")
    assert info["parameter_count"] == sum(p.numel() for p in model.parameters())


def test_it_refuses_a_directory_with_only_a_pickle_checkpoint(pickle_only):
    with pytest.raises(UnsafeCheckpoint, match="safetensors weights are required"):
        inspect_checkpoint(pickle_only)
    with pytest.raises(UnsafeCheckpoint, match="pytorch_model.bin"):
        load_causal_lm(pickle_only)


def test_it_converts_a_plain_pickle_state_dict_to_safetensors(pickle_only, tiny_model):
    target = convert_pickle_checkpoint(pickle_only)

    assert target.name == "model.safetensors"
    assert inspect_checkpoint(pickle_only) == inspect_checkpoint(tiny_model)
    converted, _ = load_causal_lm(pickle_only)
    original, _ = load_causal_lm(tiny_model)
    assert all(torch.equal(a, b) for a, b in zip(converted.state_dict().values(),
                                                 original.state_dict().values(), strict=True))


def test_the_converter_refuses_a_pickle_that_is_not_a_state_dict(copy_of):
    path = copy_of()
    (path / "model.safetensors").unlink()
    torch.save({"weights": {"nested": torch.zeros(2)}}, path / "pytorch_model.bin")

    with pytest.raises(InvalidModel, match="flat dict"):
        convert_pickle_checkpoint(path)
    assert not (path / "model.safetensors").exists()


RAN = []


def _record_that_pickle_code_ran():
    RAN.append(True)


class Exploit:
    def __reduce__(self):
        return (_record_that_pickle_code_ran, ())


def test_the_converter_never_runs_code_from_a_pickle(copy_of):
    path = copy_of()
    (path / "model.safetensors").unlink()
    torch.save({"weight": Exploit()}, path / "pytorch_model.bin")

    with pytest.raises(UnsafeCheckpoint, match="not a plain state dict"):
        convert_pickle_checkpoint(path)
    assert RAN == []


def test_it_refuses_a_directory_without_weights(copy_of):
    path = copy_of()
    (path / "model.safetensors").unlink()

    with pytest.raises(InvalidModel, match="has no weights") as refused:
        inspect_checkpoint(path)
    assert not isinstance(refused.value, UnsafeCheckpoint)


def test_it_refuses_a_missing_tokenizer(copy_of):
    path = copy_of()
    for name in TOKENIZER_FILES:
        (path / name).unlink()

    with pytest.raises(InvalidModel, match="no tokenizer") as refused:
        inspect_checkpoint(path)
    assert not isinstance(refused.value, UnsafeCheckpoint)


def test_it_refuses_an_unreadable_tokenizer(copy_of):
    path = copy_of()
    (path / "tokenizer.json").write_text("{not json", encoding="utf-8")

    with pytest.raises(InvalidModel, match="tokenizer"):
        inspect_checkpoint(path)


def test_it_refuses_a_missing_config(copy_of):
    path = copy_of()
    (path / "config.json").unlink()

    with pytest.raises(InvalidModel, match="config.json"):
        inspect_checkpoint(path)


def test_it_refuses_an_invalid_config(copy_of):
    path = copy_of()
    (path / "config.json").write_text("{not json", encoding="utf-8")

    with pytest.raises(InvalidModel, match="config.json"):
        inspect_checkpoint(path)


def test_it_refuses_a_config_that_needs_remote_code(copy_of):
    path = copy_of()
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="laoshi-evil", auto_map={"AutoConfig": "evil.EvilConfig"})
    (path / "config.json").write_text(json.dumps(config))
    (path / "evil.py").write_text("raise SystemExit('remote code ran')\n")

    with pytest.raises(InvalidModel, match="config.json"):
        inspect_checkpoint(path)


def test_it_refuses_a_model_that_is_not_a_causal_lm(copy_of):
    path = copy_of()
    ViTConfig().save_pretrained(path)

    with pytest.raises(InvalidModel, match="not a causal language model"):
        inspect_checkpoint(path)


def test_it_refuses_a_path_that_is_not_a_directory(tmp_path):
    with pytest.raises(InvalidModel, match="not a directory"):
        inspect_checkpoint(tmp_path / "nothing")


def test_load_gives_an_eval_model_and_a_left_padding_tokenizer(tiny_model):
    model, tokenizer = load_causal_lm(tiny_model, device="cpu")

    assert not model.training
    assert model.dtype == torch.float32
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None
    assert pick_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_cache_returns_the_same_objects_and_evicts_the_least_recent(
        tiny_model, copy_of, monkeypatch):
    monkeypatch.setenv("LAOSHI_MODEL_CACHE_SIZE", "1")
    other = copy_of("other")

    first = load_causal_lm(tiny_model)
    assert load_causal_lm(tiny_model) is first
    assert load_causal_lm(tiny_model)[0] is first[0]
    load_causal_lm(other)
    assert [key[0] for key in cached_model_keys()] == [str(other.resolve())]
    assert load_causal_lm(tiny_model)[0] is not first[0]


def test_the_cache_keeps_two_models_by_default(tiny_model, copy_of, monkeypatch):
    monkeypatch.delenv("LAOSHI_MODEL_CACHE_SIZE", raising=False)
    other, third = copy_of("other"), copy_of("third")

    first = load_causal_lm(tiny_model)
    load_causal_lm(other)
    assert load_causal_lm(tiny_model) is first  # now the most recently used
    load_causal_lm(third)
    assert [key[0] for key in cached_model_keys()] == [str(tiny_model.resolve()),
                                                      str(third.resolve())]


def test_the_cache_size_is_read_at_call_time(tiny_model, monkeypatch):
    monkeypatch.setenv("LAOSHI_MODEL_CACHE_SIZE", "0")
    assert load_causal_lm(tiny_model) is not load_causal_lm(tiny_model)
    assert cached_model_keys() == []

    monkeypatch.setenv("LAOSHI_MODEL_CACHE_SIZE", "many")
    with pytest.raises(ValueError, match="LAOSHI_MODEL_CACHE_SIZE"):
        load_causal_lm(tiny_model)


def test_concurrent_loads_of_one_model_load_it_once(tiny_model, monkeypatch):
    calls = []
    real_load = loading._load

    def counting_load(*args):
        calls.append(args)
        return real_load(*args)

    monkeypatch.setattr(loading, "_load", counting_load)
    results = []
    threads = [threading.Thread(target=lambda: results.append(load_causal_lm(tiny_model)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(calls) == 1
    assert all(result is results[0] for result in results)


def test_hub_download_fails_clearly_without_the_network(tmp_path):
    with pytest.raises(DownloadFailed, match="could not download 'laoshi/no-such-model'"):
        hub_download("laoshi/no-such-model", tmp_path, local_files_only=True)
    with pytest.raises(ValueError, match="not a Hub model id"):
        hub_download("../etc", tmp_path)


def _reward_checkpoint(tiny_model, out, num_labels=1):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=num_labels)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


def test_a_reward_model_is_a_one_output_classifier_with_its_head(tiny_model, tmp_path):
    path = _reward_checkpoint(tiny_model, tmp_path / "rm")
    info = inspect_checkpoint(path, reward=True)
    assert info["architecture"] == "GPT2ForSequenceClassification"
    # A language model is not a reward model, nor the reverse.
    with pytest.raises(InvalidModel, match="a reward model is a sequence classifier"):
        inspect_checkpoint(tiny_model, reward=True)
    with pytest.raises(InvalidModel, match="is a classifier"):
        inspect_checkpoint(path)
    two = _reward_checkpoint(tiny_model, tmp_path / "two", num_labels=2)
    with pytest.raises(InvalidModel, match="num_labels 1"):
        inspect_checkpoint(two, reward=True)


def test_a_reward_model_without_head_weights_is_refused(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _reward_checkpoint(tiny_model, tmp_path / "rm")
    weights = load_file(path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("score.")},
              path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InvalidModel, match="no classification head"):
        inspect_checkpoint(path, reward=True)
