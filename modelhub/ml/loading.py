"""Validate and load causal language models safely, with a per-process LRU cache.

Only safetensors weights are accepted: a pickle checkpoint (`pytorch_model.bin`, `*.pt`)
can run arbitrary code when it is loaded, and models come from users. Config and
tokenizer load with `trust_remote_code=False`, so registering a model never runs code
from its directory.
"""

import json
import math
import os
import pickle
import re
import threading
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
)

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model")
# What hub_download fetches: weights as safetensors only, configs, tokenizers, templates.
HUB_ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.jinja", "tokenizer*", "*.model",
                      "*.tiktoken", "merges.txt", "vocab.txt"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULT_CACHE_SIZE = 2


class InvalidModel(ValueError):
    """The directory is not a loadable causal language model; the message names the file."""


class UnsafeCheckpoint(InvalidModel):
    """The weights are a pickle checkpoint, and only safetensors are accepted."""


class DownloadFailed(RuntimeError):
    """The Hugging Face Hub could not be reached or refused the download."""


def pick_device() -> str:
    """Return "cuda" when a GPU is available, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def inspect_checkpoint(path: str | os.PathLike, *, reward: bool = False) -> dict:
    """Validate a save_pretrained directory without running its code and describe it.

    ``reward``: the directory must hold a reward model, a sequence classifier with one
    output and its head's weights; otherwise a causal language model (and not a
    classifier). Raise UnsafeCheckpoint when it has only pickle weights, InvalidModel when
    the config, the tokenizer or the weights are missing, unreadable or of the wrong kind.
    """
    path = Path(path)
    if not path.is_dir():
        raise InvalidModel(f"{path} is not a directory")
    config = _load_config(path)
    architectures = getattr(config, "architectures", None) or []
    classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    if reward:
        mapping = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
        if type(config) not in mapping or not classifier:
            raise InvalidModel(
                f"config.json in {path}: a reward model is a sequence classifier "
                f"(architectures {architectures or 'missing'}, model_type "
                f"{config.model_type!r})")
        if config.num_labels != 1:
            raise InvalidModel(f"config.json in {path}: a reward model has one output "
                               f"(num_labels 1), not {config.num_labels}")
    else:
        mapping = MODEL_FOR_CAUSAL_LM_MAPPING
        if type(config) not in mapping:
            raise InvalidModel(
                f"config.json in {path}: model_type {config.model_type!r} is not a causal "
                "language model that transformers knows")
        if classifier:
            raise InvalidModel(f"config.json in {path}: {architectures[0]} is a classifier "
                               f"(a reward model), not a language model")
    files = safetensors_files(path)
    if reward and not _has_head(files):
        raise InvalidModel(f"{path}: the weights hold no classification head ('score.*')")
    tokenizer = _load_tokenizer(path)
    embedding_rows = getattr(config.get_text_config(), "vocab_size", None)
    if embedding_rows is not None and len(tokenizer) > embedding_rows:
        raise InvalidModel(
            f"the tokenizer in {path} has {len(tokenizer)} tokens but the model's embedding "
            f"(config.json vocab_size) has only {embedding_rows} rows")
    return {
        "architecture": architectures[0] if architectures else mapping[type(config)].__name__,
        "model_type": config.model_type,
        "parameter_count": _stored_parameter_count(files),
        "is_chat": bool(getattr(tokenizer, "chat_template", None)),
        "vocab_size": len(tokenizer),
    }


def _has_head(files: list[Path]) -> bool:
    """Return whether the weights name a 'score' head (read from the headers only)."""
    for file in files:
        try:
            with safe_open(file, framework="pt") as weights:
                if any(key.split(".")[0] == "score" for key in weights.keys()):  # noqa: SIM118
                    return True
        except (SafetensorError, OSError) as error:
            raise InvalidModel(f"{file} is not a readable safetensors file: {error}") from error
    return False


def safetensors_files(path: str | os.PathLike) -> list[Path]:
    """Return the safetensors weight files of a directory, or raise why there are none."""
    path = Path(path)
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                                .values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise InvalidModel(f"{SAFETENSORS_INDEX} in {path} is not a valid index: {error}") \
                from error
        # A shard name is a plain file name: an index must not point outside its directory.
        bad = [s for s in shards if not isinstance(s, str) or Path(s).name != s
               or not s.endswith(".safetensors")]
        if bad:
            raise InvalidModel(f"{SAFETENSORS_INDEX} in {path} names invalid shards: {bad}")
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise InvalidModel(f"{SAFETENSORS_INDEX} in {path} names missing shards: {missing}")
        return [path / s for s in shards]
    if (path / SAFETENSORS_FILE).is_file():
        return [path / SAFETENSORS_FILE]
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeCheckpoint(
            f"{path} has only pickle weights ({', '.join(pickles)}); safetensors weights "
            f"are required ({SAFETENSORS_FILE} or {SAFETENSORS_INDEX}), because loading a "
            "pickle can run arbitrary code. convert_pickle_checkpoint() converts a plain "
            "state dict.")
    raise InvalidModel(
        f"{path} has no weights: safetensors weights are required "
        f"({SAFETENSORS_FILE} or {SAFETENSORS_INDEX})")


def convert_pickle_checkpoint(path: str | os.PathLike) -> Path:
    """Write model.safetensors from a single pytorch_model.bin state dict; return its path.

    torch.load runs with weights_only=True, so a checkpoint holding anything but tensors
    and plain containers is refused rather than executed.
    """
    path = Path(path)
    source = path / "pytorch_model.bin"
    target = path / SAFETENSORS_FILE
    if not source.is_file():
        raise InvalidModel(f"{path} has no pytorch_model.bin to convert")
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as error:
        raise UnsafeCheckpoint(
            f"pytorch_model.bin in {path} is not a plain state dict of tensors: {error}") \
            from error
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InvalidModel(
            f"pytorch_model.bin in {path} is not a flat dict of name -> tensor")
    tensors, tied, storages = {}, set(), set()
    for name, tensor in state.items():
        pointer = tensor.untyped_storage().data_ptr()
        view = (pointer, tensor.storage_offset(), tuple(tensor.shape))
        # Tied weights are one tensor under two names: keep the first name only, as
        # save_pretrained does, and transformers ties the other again at load time.
        if view in tied:
            continue
        tied.add(view)
        # safetensors refuses tensors that overlap in memory: copy a view of a storage
        # already written.
        tensors[name] = tensor.clone() if pointer in storages else tensor.contiguous()
        storages.add(pointer)
    tmp = path / f".{SAFETENSORS_FILE}.tmp"
    save_file(tensors, tmp, metadata={"format": "pt"})
    tmp.rename(target)
    return target


def _load_config(path: Path):
    """Return the AutoConfig of path, or raise InvalidModel naming config.json."""
    if not (path / "config.json").is_file():
        raise InvalidModel(f"{path} has no config.json")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InvalidModel(f"config.json in {path} cannot be loaded: {error}") from error


def _load_tokenizer(path: Path):
    """Return the AutoTokenizer of path, or raise InvalidModel naming the tokenizer files."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise InvalidModel(f"{path} has no tokenizer (tokenizer.json or tokenizer_config.json)")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False,
                                             local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise InvalidModel(
            f"the tokenizer in {path} (tokenizer.json / tokenizer_config.json) cannot be "
            f"loaded: {error}") from error


def _stored_parameter_count(files: list[Path]) -> int:
    """Count the values stored in safetensors files from their headers alone."""
    total = 0
    for file in files:
        try:
            # safe_open maps the file and reads only the header until a tensor is asked for.
            with safe_open(file, framework="pt") as weights:
                for name in weights.keys():
                    total += math.prod(weights.get_slice(name).get_shape())
        except (SafetensorError, OSError) as error:
            raise InvalidModel(f"{file.name} in {file.parent} is not readable: {error}") \
                from error
    return total


# The cache: (resolved path, device, dtype) -> (model, tokenizer), least recently used first.
_cache: OrderedDict[tuple[str, str, str], tuple] = OrderedDict()
_cache_lock = threading.Lock()
# One lock per model being loaded, so that two threads asking for the same model load it
# once (twice would double the memory) while hits on other models never wait for a load.
_loading: dict[tuple[str, str, str], threading.Lock] = {}


def cache_size() -> int:
    """Return LAOSHI_MODEL_CACHE_SIZE (default 2; 0 disables the cache), read now."""
    raw = os.environ.get("LAOSHI_MODEL_CACHE_SIZE", str(DEFAULT_CACHE_SIZE))
    try:
        size = int(raw)
    except ValueError:
        raise ValueError(f"LAOSHI_MODEL_CACHE_SIZE must be a whole number, not {raw!r}") \
            from None
    if size < 0:
        raise ValueError(f"LAOSHI_MODEL_CACHE_SIZE must be 0 or more, not {size}")
    return size


def load_causal_lm(path: str | os.PathLike, *, device: str | torch.device | None = None):
    """Return (model, tokenizer) for a safetensors directory, from the cache when possible.

    bf16 on CUDA, float32 elsewhere; the model is in eval mode and the tokenizer pads on
    the left. Both are shared with every other caller: do not modify them.
    """
    device = str(torch.device(device or pick_device()))
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    key = (str(Path(path).resolve()), device, str(dtype))
    size = cache_size()
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        key_lock = _loading.setdefault(key, threading.Lock())
    with key_lock:
        with _cache_lock:
            if key in _cache:  # another thread loaded it while this one waited
                _cache.move_to_end(key)
                return _cache[key]
        try:
            loaded = _load(Path(key[0]), device, dtype)
        finally:
            with _cache_lock:
                _loading.pop(key, None)
        with _cache_lock:
            if size:
                _cache[key] = loaded
            while len(_cache) > size:
                _cache.popitem(last=False)
    return loaded


def clear_model_cache() -> None:
    """Forget every cached model (callers still holding one keep it alive)."""
    with _cache_lock:
        _cache.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cached_model_keys() -> list[tuple[str, str, str]]:
    """Return the cached (path, device, dtype) keys, least recently used first."""
    with _cache_lock:
        return list(_cache)


def _load(path: Path, device: str, dtype: torch.dtype):
    """Load model and tokenizer from path onto device, without the cache."""
    # Checked here too: a directory can change between registration and loading.
    safetensors_files(path)
    tokenizer = _load_tokenizer(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InvalidModel(f"the tokenizer in {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=False, local_files_only=True)
    model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def hub_download(hub_id: str, cache_dir: str | os.PathLike, *, revision: str | None = None,
                 local_files_only: bool = False) -> Path:
    """Download a Hub model's safetensors, configs and tokenizer; return the snapshot folder.

    Raise DownloadFailed when the Hub cannot be reached (offline, HF_HUB_OFFLINE=1) or
    refuses, and UnsafeCheckpoint when the repository publishes no safetensors weights.
    """
    if not HUB_ID.match(hub_id):
        raise ValueError(f"{hub_id!r} is not a Hub model id like 'owner/name'")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(
            repo_id=hub_id, revision=revision, cache_dir=str(cache_dir),
            allow_patterns=HUB_ALLOW_PATTERNS, local_files_only=local_files_only))
    except (OSError, ValueError) as error:
        # OSError covers the Hub's HTTP errors, "offline mode is enabled" and a missing
        # local snapshot; ValueError an id the Hub itself rejects.
        raise DownloadFailed(
            f"could not download {hub_id!r} from the Hugging Face Hub: {error}") from error
    if not any(folder.glob("*.safetensors")):
        raise UnsafeCheckpoint(
            f"{hub_id!r} publishes no safetensors weights; only safetensors are accepted")
    return folder
