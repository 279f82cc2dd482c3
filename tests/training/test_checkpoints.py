"""Complete checkpoints: the marker is written last, and only marked folders are resumed."""

import orjson

from training.checkpoints import (
    MARKER,
    is_complete,
    latest_checkpoint,
    mark_complete,
    read_marker,
    write_atomically,
)


def test_only_marked_checkpoints_count_and_the_newest_wins(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    for step in (2, 10, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "weights").write_bytes(b"w" * step)
    (tmp_path / "checkpoint-oops").mkdir()
    assert latest_checkpoint(tmp_path) is None
    mark_complete(tmp_path / "checkpoint-2", {"step": 2})
    mark_complete(tmp_path / "checkpoint-10", {"step": 10, "config": {"lr": 1e-5}})
    # checkpoint-12 was being written when the trainer died: no marker, not resumed.
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert is_complete(tmp_path / "checkpoint-10") and not is_complete(tmp_path / "checkpoint-12")
    assert read_marker(tmp_path / "checkpoint-10") == {"step": 10, "config": {"lr": 1e-5}}


def test_an_atomic_write_leaves_no_temporary_file(tmp_path):
    write_atomically(tmp_path / MARKER, orjson.dumps({"a": 1}))
    write_atomically(tmp_path / MARKER, orjson.dumps({"a": 2}))
    assert [p.name for p in tmp_path.iterdir()] == [MARKER]
    assert orjson.loads((tmp_path / MARKER).read_bytes()) == {"a": 2}
