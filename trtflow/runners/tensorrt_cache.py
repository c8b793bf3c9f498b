"""TensorRT's timing cache, shared by the builds of one run: read under a lock, merged with what
parallel builds wrote meanwhile, and written back atomically.

Standard library only (the cache object comes from the builder config handed in).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

from ..io import atomic_path

log = logging.getLogger(__name__)


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


def load_timing_cache(config, path: Optional[Path], logger) -> Tuple[Any, str, int]:
    """Attach the shared timing cache; return it, its state (cold / warm / unreadable) and size.

    TensorRT reports an unreadable cache through its logger, not an exception (seen with
    TensorRT 8.6.0: "myelinCache.h::deserializeFromBuffer ... The timing cache will not be
    used!"), so the logger's error count tells whether the cache was taken."""
    data = b""
    if path is not None and path.exists():
        with locked(path):
            data = path.read_bytes()
    errors_before = len(logger.errors)
    try:
        cache = config.create_timing_cache(data)
    except Exception:  # a corrupt or foreign cache: start empty, the build still works
        cache = None
    if cache is None or len(logger.errors) > errors_before:
        log.info("timing cache %s: this TensorRT does not take it (state unreadable); building "
                 "without it, and writing a new one", path)
        cache, state = config.create_timing_cache(b""), "unreadable"
    else:
        state = "warm" if data else "cold"
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache, state, len(data)


def save_timing_cache(config, path: Path, merge: bool = True) -> int:
    """Merge what others wrote meanwhile into this build's cache (unless the file was found
    unreadable: reading it again would only repeat TensorRT's errors) and write it back
    atomically."""
    cache = config.get_timing_cache()
    with locked(path):
        if merge and path.exists():
            try:
                if not cache.combine(config.create_timing_cache(path.read_bytes()), True):
                    log.warning("timing cache %s not merged (another TensorRT version?)", path)
            except Exception:
                log.warning("timing cache %s unreadable, overwriting", path)
        data = bytes(cache.serialize())
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return len(data)
