"""The engine and the PyTorch model it came from, timed side by side (issue 22 item 4).

The baseline job times PyTorch in a job of its own, minutes before or after the engine's: on a
shared machine a neighbour's load then lands on one and not the other, and their ratio moved from
0.58 to 166 for the same cells. Here the benchmark job, right after timing its engine, times short
windows of the engine and of PyTorch in turn (engine, PyTorch, PyTorch, engine, engine, ...: ABBA,
so a load that grows or fades during the run hits both sides alike). Each adjacent pair gives one
ratio; the speed-up is their median, its interval their range, and it is stable when the range
is within the timing tolerance.

PyTorch runs in its own process (trtflow.torch_timer) under the PyTorch Python, which on Jetsons
and in NGC containers is not TensorRT's: this module is standard library and numpy only.
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .benchmark import cpu_wait_text
from .contention import CpuWait, contended, wait_share
from .interpreter_env import workflow_environment

log = logging.getLogger(__name__)

TIMER_MODULE = "trtflow.torch_timer"  # run with -m under the PyTorch Python


class TorchTimerError(RuntimeError):
    """The PyTorch timer could not start or answer: the cell keeps the baseline job's timing."""


class TorchTimer:
    """A PyTorch model in a worker process, timed on request at a batch of the reference inputs:
    `with TorchTimer(...) as timer: timer.time(batch, warmup, iterations, seconds)`."""

    def __init__(self, python: str, model: str, spec: Mapping[str, Any], weights: str,
                 reference: str, device: str, threads: int, log_path: Optional[str] = None) -> None:
        root = str(Path(__file__).resolve().parents[1])
        self.command = [python, "-m", TIMER_MODULE, "--model", model, "--spec", json.dumps(spec),
                        "--weights", weights, "--reference", reference, "--device", device,
                        "--threads", str(threads)] + (["--log", log_path] if log_path else [])
        env = workflow_environment()  # not TensorRT's wrapper's: see trtflow/interpreter_env.py
        self.env = {**env, "PYTHONPATH": os.pathsep.join(
            [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])}
        self.process: Optional[subprocess.Popen] = None
        self.info: Dict[str, Any] = {}

    def __enter__(self) -> "TorchTimer":
        # stderr to a file, not a pipe: a worker that warns a lot must not block on a full pipe
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, text=True, env=self.env)
        try:
            self.info = self._answer()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is None:
            return
        try:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.stderr.close()
        self.process = None

    def time(self, batch: int, warmup: int, iterations: int, seconds: float) -> Dict[str, Any]:
        """{"times_ms": [...], "cpu_times": (on-CPU ns, waiting ns) or None} of one window."""
        request = {"batch": int(batch), "warmup": int(warmup), "iterations": int(iterations),
                   "seconds": float(seconds)}
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except OSError as exc:
            raise TorchTimerError(f"the PyTorch timer stopped ({exc}){self._stderr()}") from exc
        return self._answer()

    def _answer(self) -> Dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise TorchTimerError(f"the PyTorch timer exited with code {self.process.returncode}"
                                  f"{self._stderr()}")
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise TorchTimerError(f"the PyTorch timer answered {line[:200]!r}") from exc
        if "error" in answer:
            raise TorchTimerError(f"the PyTorch timer failed: {answer['error']}")
        return answer

    def _stderr(self) -> str:
        self.stderr.seek(0)
        text = self.stderr.read()
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return f": {lines[-1][:300]}" if lines else ""


def window_plan(settings: Mapping[str, Any]) -> Dict[str, Any]:
    """How long each side's window is: the benchmark's iterations split into its windows, at
    least 3, within a share of max_seconds (the 2 x pairs windows take half of it in all: the
    engine was just timed, this is its ratio to PyTorch). The engine is warm; PyTorch's worker
    warms up at most 2 runs."""
    pairs = int(settings["side_by_side_pairs"])
    return {"pairs": pairs, "engine_warmup": 1, "torch_warmup": min(int(settings["warmup"]), 2),
            "iterations": max(3, math.ceil(int(settings["iterations"]) / int(settings["windows"]))),
            "seconds": float(settings["max_seconds"]) / (4 * pairs)}


def alternate(engine_window: Callable[[], Mapping[str, Any]],
              torch_window: Callable[[], Mapping[str, Any]], pairs: int) -> Dict[str, Any]:
    """Each side's window medians, timed in ABBA order (engine first), and the share of the
    windows' runnable time spent waiting for a CPU, over all of them (trtflow.contention). A
    window is {"times_ms", "cpu_times": (on-CPU ns, waiting ns) or None}."""
    medians: Dict[str, List[float]] = {"engine": [], "torch": []}
    cpu_times: List[Any] = []
    sides = {"engine": engine_window, "torch": torch_window}
    for index in range(pairs):
        order = ("engine", "torch") if index % 2 == 0 else ("torch", "engine")
        for side in order:
            window = sides[side]()
            medians[side].append(float(np.median(window["times_ms"])))
            cpu_times.append(window.get("cpu_times"))
    return {**medians, "cpu_wait_share": wait_share(cpu_times)}


def paired_speedup(engine_ms: Sequence[float], torch_ms: Sequence[float], tolerance: float,
                   cpu_wait: Optional[float] = None, max_cpu_wait: float = 1.0) -> Dict[str, Any]:
    """The speed-up from adjacent windows: median, range, and whether it is stable: the range
    within `tolerance` (a fraction of its low end) and no window more than `max_cpu_wait` of
    its time waiting for a CPU (a steady load moves the ratio of windows that agree)."""
    ratios = [t / e for e, t in zip(engine_ms, torch_ms)]
    low, high = min(ratios), max(ratios)
    spread = (high - low) / low
    return {"engine_window_p50_ms": list(engine_ms), "torch_window_p50_ms": list(torch_ms),
            "ratios": ratios, "speedup": float(np.median(ratios)), "interval": [low, high],
            "spread": spread, "cpu_wait_share": cpu_wait,
            "stable": spread <= tolerance and not contended(cpu_wait, max_cpu_wait),
            "engine_p50_ms": float(np.median(engine_ms)), "torch_p50_ms": float(np.median(torch_ms))}


def time_side_by_side(engine_runner, feed: Mapping[str, np.ndarray], mode: Optional[str],
                      timer: TorchTimer, batch: int, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The engine (in timing `mode`) and `timer`'s PyTorch model at `batch`, in turn."""
    plan = window_plan(settings)
    first = {"engine": True, "torch": True}

    def warmup(side: str) -> int:  # each side warms up once, then one run per window
        was_first, first[side] = first[side], False
        return plan[f"{side}_warmup"] if was_first else 1

    def engine_window() -> Dict[str, Any]:
        waited = CpuWait()
        times = engine_runner.time(feed, warmup("engine"), plan["iterations"], plan["seconds"],
                                   **({"mode": mode} if mode else {}))
        return {"times_ms": times, "cpu_times": waited.times()}

    def torch_window() -> Dict[str, Any]:
        return timer.time(batch, warmup("torch"), plan["iterations"], plan["seconds"])

    medians = alternate(engine_window, torch_window, plan["pairs"])
    result = {"batch": batch, "pairs": plan["pairs"], "window_iterations": plan["iterations"],
              "timing_mode": mode or "", "torch": timer.info,
              **paired_speedup(medians["engine"], medians["torch"],
                               float(settings["stability_tolerance"]), medians["cpu_wait_share"],
                               float(settings["max_cpu_wait"]))}
    log.info("side by side at batch %d, %d pairs: speed-up %.3gx (%.3g-%.3g, %s, %s), engine %s "
             "ms, PyTorch %s ms", batch, plan["pairs"], result["speedup"], *result["interval"],
             "stable" if result["stable"] else "UNSTABLE", cpu_wait_text(result["cpu_wait_share"]),
             "/".join(f"{m:.3g}" for m in medians["engine"]),
             "/".join(f"{m:.3g}" for m in medians["torch"]))
    return result


def side_by_side(engine_runner, feed: Mapping[str, np.ndarray], mode: Optional[str],
                 batch: int, settings: Mapping[str, Any],
                 timer_args: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """time_side_by_side with a TorchTimer started from `timer_args`; {"skipped": why} where it
    is off or PyTorch cannot be timed (the summary then says the speed-up is from separate
    jobs, and why)."""
    if not int(settings.get("side_by_side_pairs", 0)):
        return {"skipped": "benchmark.side_by_side_pairs is 0"}
    if not timer_args:
        return {"skipped": "no PyTorch model to time beside the engine"}
    try:
        with TorchTimer(**timer_args) as timer:
            return time_side_by_side(engine_runner, feed, mode, timer, batch, settings)
    except TorchTimerError as exc:
        log.warning("side-by-side timing skipped: %s; the speed-up comes from the separate "
                    "baseline job", exc)
        return {"skipped": str(exc)}
