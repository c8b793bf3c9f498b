"""How long a process's threads waited for a CPU while it was being timed (Linux schedstat).

Windows that agree with each other do not show a steady competing load: a neighbour that takes
half the cores slows every window alike, and slows an engine and PyTorch by different amounts
(hyperthreads share their core's units), so their ratio moves while each looks stable. The
kernel counts, per thread, the time it was runnable but waiting on a run queue
(/proc/<pid>/task/<tid>/schedstat: on-CPU ns, waiting ns, timeslices): the share of a timed
block's runnable time spent waiting says whether the machine was free. A thread blocked on a
GPU or on I/O is not runnable, so GPU timing reads near 0 too. Standard library only.
"""
from __future__ import annotations

import glob
import os
from typing import Optional, Sequence, Tuple


def scheduler_times(pid: Optional[int] = None) -> Optional[Tuple[int, int]]:
    """(on-CPU ns, run-queue wait ns) summed over the threads of `pid` (this process); None
    where the kernel does not keep them (not Linux, schedstats off)."""
    run = wait = 0
    paths = glob.glob(f"/proc/{pid or os.getpid()}/task/*/schedstat")
    for path in paths:
        try:
            with open(path) as handle:
                fields = handle.read().split()
        except OSError:  # a thread that ended meanwhile
            continue
        run, wait = run + int(fields[0]), wait + int(fields[1])
    return (run, wait) if paths and run else None


class CpuWait:
    """The threads' run-queue wait since it started: `waited = CpuWait()`, then `waited.times()`
    (on-CPU ns, waiting ns) and `waited.share()`, the share of their runnable time spent waiting
    for a CPU (None where it cannot be read). Over milliseconds it says little (a thread inside
    its time slice has not waited yet): measure over the whole timing, not one short window.
    Threads that ended meanwhile are not counted."""

    def __init__(self) -> None:
        self.start = scheduler_times()

    def times(self) -> Optional[Tuple[int, int]]:
        end = scheduler_times()
        if self.start is None or end is None:
            return None
        run, wait = end[0] - self.start[0], end[1] - self.start[1]
        return (run, wait) if run > 0 and wait >= 0 else None

    def share(self) -> Optional[float]:
        return wait_share([self.times()])


def wait_share(times: Sequence[Optional[Tuple[int, int]]]) -> Optional[float]:
    """The waiting share of several (on-CPU ns, waiting ns) measurements together."""
    known = [t for t in times if t is not None]
    if not known:
        return None
    run, wait = sum(t[0] for t in known), sum(t[1] for t in known)
    return wait / (run + wait) if run + wait else None


def contended(share: Optional[float], max_share: float) -> bool:
    """Whether a measured wait share says the machine was not free (unknown: not contended)."""
    return share is not None and share > max_share
