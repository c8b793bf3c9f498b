"""Small I/O helpers shared by every stage: atomic writes, JSON, hashing (stdlib + numpy only)."""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, TypeVar, Union

from .errors import TrtflowError

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")
# input artifact path -> the workflow rule that writes it (a stage script gets it as --producers)
_PRODUCERS: Dict[str, str] = {}


def set_producers(producers: Mapping[str, str]) -> None:
    _PRODUCERS.update({os.path.normpath(k): v for k, v in producers.items()})


CORRUPT_SUFFIX = ".corrupt"


def read_artifact(path: PathLike, reader: Callable[[Path], T], what: str) -> T:
    """Read an artifact with `reader`; a file that does not decode (truncated, corrupt) becomes
    one TrtflowError naming it and the stage that writes it. A workflow artifact is marked
    (`<file>.corrupt`): the workflow deletes it when it next starts, so that its stage makes it
    again (deleting it now would pull it from under other running jobs). A user's own file is
    left alone."""
    try:
        return reader(Path(path))
    except TrtflowError:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:  # every decoder has its own errors: protobuf, zip, pickle, JSON...
        stage = _PRODUCERS.get(os.path.normpath(str(path)))
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {message}"
        if stage:
            Path(str(path) + CORRUPT_SUFFIX).write_text(f"{stage}\n{detail}\n")
            raise TrtflowError(
                f"cannot read this {what}, made by the workflow's '{stage}' stage: it is "
                f"truncated or corrupt ({detail})", path=str(path),
                fix=f"rerun snakemake: it deletes the file and the '{stage}' stage makes it "
                    "again") from exc
        raise TrtflowError(f"cannot read this {what}: it is truncated or corrupt ({detail})",
                           path=str(path), fix="replace it with an intact copy") from exc


def corrupt_artifacts(root: PathLike) -> List[str]:
    """Every artifact under `root` that a stage found corrupt (it left a marker beside it)."""
    return sorted(str(marker)[:-len(CORRUPT_SUFFIX)]
                  for marker in Path(root).rglob("*" + CORRUPT_SUFFIX))


def remove_corrupt_artifacts(artifacts: List[str]) -> None:
    """Delete these artifacts and their corrupt-markers (a run that makes them again starts)."""
    for artifact in artifacts:
        Path(artifact).unlink(missing_ok=True)
        Path(artifact + CORRUPT_SUFFIX).unlink(missing_ok=True)


# A temporary file's name says who writes it: `.<artifact>.<host>-<pid>.<random>.tmp`, so that a
# writer removes only leftovers of its own host's dead writers (a job killed mid-write), never the
# file of another writer still at work on the same artifact (a concurrent run, a job on another
# node of a shared file system).
TEMP_SUFFIX = ".tmp"
HOST_CHARS = 32  # of the host name in a temporary file's name
PID_DIGITS = 7  # Linux's largest pid_max, 4194304
RANDOM_CHARS = 8  # tempfile.mkstemp's
_TEMP_RE = re.compile(r"\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>[0-9]+)\.[A-Za-z0-9_]+" +
                      re.escape(TEMP_SUFFIX) + r"\Z")


def _host() -> str:
    name = socket.gethostname().split(".")[0] or "host"
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:HOST_CHARS]


def longest_sibling_name(name: str) -> int:
    """Bytes of the longest file name the workflow makes beside a file named `name`: its
    temporary file while it is written, or its corrupt-marker."""
    size = len(name.encode())
    temporary = 1 + size + 1 + HOST_CHARS + 1 + PID_DIGITS + 1 + RANDOM_CHARS + len(TEMP_SUFFIX)
    return max(temporary, size + len(CORRUPT_SUFFIX))


def _writer_is_gone(host: str, pid: int) -> bool:
    """True only when the writer ran on this host and its process no longer exists."""
    if host != _host() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def remove_dead_writers_files(final: Path) -> None:
    """Temporary files of `final` whose writer was killed mid-write (SIGKILL, OOM)."""
    prefix = f".{final.name}"
    for leftover in final.parent.glob(f".{glob.escape(final.name)}.*{TEMP_SUFFIX}"):
        match = _TEMP_RE.fullmatch(leftover.name[len(prefix):])
        if match and _writer_is_gone(match["host"], int(match["pid"])):
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    A stage killed or failing half-way therefore never leaves a partial artifact where Snakemake
    (or a user running the script by hand) would take it for a finished one. The temporary name
    is this writer's own; another writer's temporary file is never touched.
    """
    final = Path(path)
    with storage_errors_said(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_writers_files(final)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{_host()}-{os.getpid()}.",
                                        suffix=TEMP_SUFFIX, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with storage_errors_said(final):
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts are shared
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def storage_error(exc: BaseException, path: PathLike) -> Optional[TrtflowError]:
    """A full disk or a folder this user cannot write, as one TrtflowError naming the file and
    the fix; None for any other error. Writers report a full disk their own way (PIL and numpy an
    OSError, torch.save a RuntimeError): a failed write on a file system with no space left is
    taken for one."""
    code = exc.errno if isinstance(exc, OSError) else None
    folder = Path(path).parent
    if code in NO_PERMISSION:
        return TrtflowError(f"cannot write here: {os.strerror(code)}", path=str(path),
                            fix=f"make {folder} writable for this user, or set results_dir to a "
                                "folder that is")
    if code in NO_SPACE or (code is None and _no_space_left(folder)):
        return TrtflowError("no space left on the device while writing this file",
                            path=str(path),
                            fix=f"free space on the disk of {folder} (`df -h {folder}`) and rerun: "
                                "the run goes on from the artifacts that are complete")
    return None


def _no_space_left(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail == 0


@contextlib.contextmanager
def storage_errors_said(path: PathLike) -> Iterator[None]:
    """Turn a full disk or a permission error while writing `path` into one TrtflowError."""
    try:
        yield
    except TrtflowError:
        raise
    except Exception as exc:
        said = storage_error(exc, path)
        if said is None:
            raise
        raise said from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def stamp_provenance(path: PathLike, provenance: str) -> None:
    """Record the workflow's provenance digest in a JSON artifact a stage has written."""
    if provenance:
        data = read_json(path)
        data["provenance"] = provenance
        write_json(path, data)


def read_json(path: PathLike) -> Any:
    return read_artifact(path, lambda p: json.loads(p.read_text()), "JSON file")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays show up in metrics; make them plain JSON
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def save_npz(path: PathLike, arrays: dict) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def load_npz(path: PathLike) -> dict:
    import numpy as np

    def read(p: Path) -> dict:
        with np.load(p, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    return read_artifact(path, read, "reference .npz")


def load_onnx(path: PathLike):
    """An ONNX model from an earlier stage (decode errors become one clear TrtflowError)."""
    import onnx

    return read_artifact(path, lambda p: onnx.load(str(p)), "ONNX model")


def reference_part(arrays: dict, kind: str) -> dict:
    """The 'input:<name>' or 'output:<name>' arrays of a reference .npz, keyed by <name>."""
    prefix = f"{kind}:"
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
