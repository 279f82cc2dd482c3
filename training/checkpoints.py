"""Complete checkpoints: written, fsynced, then marked complete by a record written last.

No torch and no Django here. A checkpoint folder counts only once it holds
``laoshi_checkpoint.json`` (the marker): a trainer killed while saving leaves a folder
without it, which resuming skips. The marker is self-describing: the run kind, the step,
the best metric so far and the config that trained it.
"""

import os
import shutil
from pathlib import Path
from typing import Any

import orjson

MARKER = "laoshi_checkpoint.json"


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entry to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under root, and root itself."""
    for path in sorted(root.rglob("*"), reverse=True):
        fsync_path(path)
    fsync_path(root)


def write_atomically(path: Path, data: bytes) -> None:
    """Write a file aside, flush it, rename it into place and flush the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def mark_complete(folder: Path, record: dict[str, Any]) -> None:
    """Flush the checkpoint's files, then write its marker (the record) last."""
    fsync_tree(folder)
    write_atomically(folder / MARKER, orjson.dumps(record, option=orjson.OPT_INDENT_2
                                                   | orjson.OPT_SERIALIZE_NUMPY))


def is_complete(folder: Path) -> bool:
    """Return whether a checkpoint folder was marked complete."""
    return (folder / MARKER).is_file()


def read_marker(folder: Path) -> dict[str, Any]:
    """Return a complete checkpoint's record."""
    return orjson.loads((folder / MARKER).read_bytes())


def latest_checkpoint(directory: Path) -> Path | None:
    """Return the newest complete ``checkpoint-<step>`` folder under directory, if any."""
    if not directory.is_dir():
        return None
    complete = [p for p in directory.glob("checkpoint-*")
                if p.name.split("-")[-1].isdigit() and is_complete(p)]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def save_final_model(out: Path, model: Any, tokenizer: Any, record: dict[str, Any]) -> Path:
    """Save a trained model (``save_pretrained``: safetensors, no pickled arguments) and its
    tokenizer into ``out``, each file written aside and renamed into place, then the
    training record, last: its presence says the folder holds a complete model."""
    from modelhub.ml.tiny import TRAINING_RECORD

    out.mkdir(parents=True, exist_ok=True)
    (out / TRAINING_RECORD).unlink(missing_ok=True)
    tmp = out / ".final-tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an attempt that died while saving
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for path in tmp.iterdir():
        os.replace(path, out / path.name)
    tmp.rmdir()
    write_atomically(out / TRAINING_RECORD, orjson.dumps(record, option=orjson.OPT_INDENT_2))
    return out
