"""TensorRT's timing cache, shared by the builds of one run: read under a lock, merged with what
parallel builds wrote meanwhile, and written back atomically, only if TensorRT can read it back.

Why the read-back: TensorRT 8.6.0 writes caches that it then refuses ("myelinCache.h::
deserializeFromBuffer ... Myelin error from unknown graph ... The timing cache will not be
used!"; notes/trt_api.md, benchmarks/gpu/timing-cache.md). Writing such a blob over a readable
file threw away what every earlier build had learned (the file shrank from 127 kB to 25 kB), and
every later build then ran cold. So a file is replaced only by a cache that reads back, which
holds everything the file held (merged in): it never shrinks, and it stays readable.

Standard library only (the cache object comes from the builder config handed in).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from ..io import atomic_path

log = logging.getLogger(__name__)


@dataclass
class CacheRecord:
    """What a build did with the shared timing cache (the engine sidecar's `timing_cache`)."""

    path: Optional[str]
    state: str = "none"          # none | cold | warm | unreadable | dropped (failed build)
    bytes_before: int = 0
    bytes_after: int = 0
    saved: Optional[str] = None  # "merged", "replaced unreadable", or why it was not saved
    retried_without: Optional[str] = None  # the error of a build with the cache that failed

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside `path` (never deleted: a recreated lock file would let two holders
    in), so parallel builds read-merge-write the shared timing cache one at a time."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a+b") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def readable_cache(config, data: bytes, logger) -> Optional[Any]:
    """The cache TensorRT makes of `data`, or None where it refuses it. TensorRT reports an
    unreadable cache through its logger, not an exception or a None result (8.6.0), so the
    logger's error count tells."""
    errors_before = len(logger.errors)
    try:
        cache = config.create_timing_cache(data)
    except Exception:  # a corrupt or foreign blob
        return None
    return None if cache is None or len(logger.errors) > errors_before else cache


def attach_timing_cache(config, path: Optional[Path], logger) -> CacheRecord:
    """Attach the shared cache at `path` (or an empty one) and say in what state it was found."""
    record = CacheRecord(path=str(path) if path else None)
    if path is None:
        return record
    data = b""
    if path.exists():
        with locked(path):
            data = path.read_bytes()
    record.bytes_before = len(data)
    cache = readable_cache(config, data, logger) if data else None
    if data and cache is None:
        log.info("timing cache %s: TensorRT does not take it (state unreadable); building "
                 "without it", path)
        record.state = "unreadable"
    else:
        record.state = "warm" if data else "cold"
    config.set_timing_cache(cache if cache is not None else config.create_timing_cache(b""),
                            ignore_mismatch=False)
    return record


def detach_timing_cache(config, record: CacheRecord) -> None:
    """Build on without the cache (a build that failed with it is retried so: issue 21)."""
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    record.state = "dropped"


def save_timing_cache(config, path: Path, logger, record: CacheRecord) -> None:
    """Merge what others wrote meanwhile into this build's cache and write it back atomically,
    only if TensorRT reads the result back (see the module docstring); say in `record` what
    was done."""
    cache = config.get_timing_cache()
    with locked(path):
        current = path.read_bytes() if path.exists() else b""
        previous = readable_cache(config, current, logger) if current else None
        if previous is not None and not cache.combine(previous, True):
            log.warning("timing cache %s not merged (another TensorRT version?)", path)
        data = bytes(cache.serialize())
        if readable_cache(config, data, logger) is None:
            record.saved = ("not saved: TensorRT cannot read back this build's cache "
                            "(TensorRT 8.6.0 with Myelin entries: benchmarks/gpu/timing-cache.md)")
            record.bytes_after = len(current)
            log.info("timing cache %s: %s; the file keeps what it had (%d bytes)", path,
                     record.saved, len(current))
            return
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    record.saved = "merged" if previous is not None or not current else "replaced unreadable"
    record.bytes_after = len(data)
