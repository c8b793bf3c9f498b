"""trtflow.io: atomic writes, JSON with numpy values, hashing, npz round trips."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trtflow import io
from trtflow.errors import TrtflowError
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


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_atomic_path_removes_the_leftovers_of_a_killed_write(tmp_path: Path) -> None:
    host = io._host()
    leftover = tmp_path / f".model.onnx.{host}-{_dead_pid()}.abc12345.tmp"  # a SIGKILLed job's
    leftover.write_bytes(b"")
    other = tmp_path / f".other.onnx.{host}-{_dead_pid()}.abc12345.tmp"
    other.write_bytes(b"")
    with atomic_path(tmp_path / "model.onnx") as tmp:
        tmp.write_bytes(b"new")
    assert not leftover.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "model.onnx"]


def test_a_writer_never_removes_another_writers_temporary_file(tmp_path: Path) -> None:
    """Issue 24: atomic_path deleted every temporary file of its target, so a concurrent writer's
    rename failed. Two writers of one artifact (here nested in one process, and a live process's
    and another host's files) both finish; the last rename wins."""
    target = tmp_path / "cache.json"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            live_file = tmp_path / f".cache.json.{io._host()}-{live.pid}.abc12345.tmp"
            remote_file = tmp_path / f".cache.json.{io._host()}x-{_dead_pid()}.abc12345.tmp"
            for path in (live_file, remote_file):
                path.write_bytes(b"busy")
            with atomic_path(target) as first:
                first.write_text("first")
                with atomic_path(target) as second:
                    assert first.exists() and first != second
                    second.write_text("second")
                assert target.read_text() == "second"
            assert target.read_text() == "first"
            assert live_file.read_bytes() == b"busy" and remote_file.read_bytes() == b"busy"
        finally:
            live.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live_file.name, remote_file.name, "cache.json"])


def test_temporary_names_are_unique_per_writer(tmp_path: Path) -> None:
    """Writers in other processes get names of their own (host and pid in the name)."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from trtflow.io import atomic_path\n"
              "with atomic_path(sys.argv[2]) as tmp: print(tmp.name)")
    names = {subprocess.run([sys.executable, "-c", script, str(Path(io.__file__).parents[1]),
                             str(tmp_path / "a.onnx")], capture_output=True, text=True,
                            check=True).stdout.strip() for _ in range(2)}
    assert len(names) == 2
    assert all(name.startswith(f".a.onnx.{io._host()}-") for name in names), names


def test_longest_sibling_name_counts_the_temporary_name_in_bytes() -> None:
    name = "ü" * 10  # 20 bytes
    with_temp = len(f".{name}.{'h' * io.HOST_CHARS}-{'9' * io.PID_DIGITS}.abcdefgh.tmp".encode())
    assert io.longest_sibling_name(name) == with_temp


# --- issue 24 case 12: a full disk or an unwritable folder is one TrtflowError ----------------

@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 256 KiB file system (tmpfs), so that writes meet a real ENOSPC."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # torch may hold its file


def _write_noise_png(path: Path) -> None:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")


def _write_torch(path: Path) -> None:
    import torch

    torch.save({"w": torch.randn(200_000)}, path)


@pytest.mark.parametrize("writer", ["npz", "png", "torch"])
def test_a_full_disk_is_one_error_naming_the_file_and_the_fix(small_disk: Path, writer: str) -> None:
    """numpy and PIL raise OSError 28, torch.save a RuntimeError: each is the same one error."""
    target = small_disk / "results" / f"artifact.{writer}"
    with pytest.raises(TrtflowError) as info:
        if writer == "npz":
            save_npz(target, {"a": np.random.default_rng(0).standard_normal(200_000)})
        else:
            with atomic_path(target) as tmp:
                (_write_noise_png if writer == "png" else _write_torch)(tmp)
    text = str(info.value)
    assert text.startswith(f"file '{target}': no space left on the device while writing this file")
    assert f"df -h {target.parent}" in info.value.fix
    assert list(target.parent.iterdir()) == []  # neither the artifact nor a temporary file


def test_a_folder_that_cannot_be_written_is_one_error(small_disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    target = small_disk / "artifact.json"
    with pytest.raises(TrtflowError) as info:
        write_json(target, {"a": 1})
    assert str(info.value).startswith(f"file '{target}': cannot write here: Read-only file system")
    assert f"make {small_disk} writable" in info.value.fix
