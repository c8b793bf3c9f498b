"""trtflow.io: atomic writes, JSON with numpy values, hashing, npz round trips."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from trtflow.io import (atomic_path, load_npz, read_json, save_npz, sha256_file,
                        write_json)


def test_atomic_path_leaves_no_file_when_the_block_raises(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "artifact.onnx"
    with pytest.raises(RuntimeError, match="killed half-way"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed half-way")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file left either


def test_atomic_path_keeps_the_old_file_when_the_block_raises(tmp_path: Path) -> None:
    target = tmp_path / "artifact.json"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("new but broken")
            raise ValueError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact.json"]


def test_atomic_path_moves_the_file_into_place(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert not target.exists()  # nothing visible until the block succeeds
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_atomic_path_gives_shared_permissions_not_mkstemp_0600(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_write_json_turns_numpy_and_paths_into_plain_json(tmp_path: Path) -> None:
    data = {"f": np.float32(0.5), "i": np.int64(3), "a": np.arange(3), "p": Path("/a/b")}
    write_json(tmp_path / "d.json", data)
    assert read_json(tmp_path / "d.json") == {"f": 0.5, "i": 3, "a": [0, 1, 2], "p": "/a/b"}
    assert (tmp_path / "d.json").read_text().endswith("}\n")


def test_write_json_refuses_unknown_objects_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    payload = os.urandom(3000)
    path = tmp_path / "blob"
    path.write_bytes(payload)
    assert sha256_file(path, chunk=1000) == hashlib.sha256(payload).hexdigest()
    assert sha256_file(path) == hashlib.sha256(payload).hexdigest()


def test_npz_round_trip_keeps_dtypes_and_strings(tmp_path: Path) -> None:
    arrays = {"input:tokens": np.arange(6, dtype=np.int64).reshape(2, 3),
              "output:logits": np.ones((2, 4), dtype=np.float32),
              "__samples__": np.array(["chelsea", "coffee"])}
    save_npz(tmp_path / "ref.npz", arrays)
    loaded = load_npz(tmp_path / "ref.npz")
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)


def test_atomic_path_removes_the_leftovers_of_a_killed_write(tmp_path: Path) -> None:
    leftover = tmp_path / ".model.onnx.abc123.tmp"  # what a SIGKILLed job leaves behind
    leftover.write_bytes(b"")
    other = tmp_path / ".other.onnx.abc123.tmp"
    other.write_bytes(b"")
    with atomic_path(tmp_path / "model.onnx") as tmp:
        tmp.write_bytes(b"new")
    assert not leftover.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.onnx.abc123.tmp", "model.onnx"]
