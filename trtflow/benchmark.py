"""Benchmark stage: latency percentiles and throughput at a profile's min/opt/max batch, and the
engine's per-layer profile at the opt batch."""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .contention import CpuWait, contended
from .data import batch_of
from .profiling import summarize_profile
from .runners.base import TimingModeUnavailable

log = logging.getLogger(__name__)


def latency_stats(times_ms: Sequence[float], batch: int) -> Dict[str, float]:
    times = np.asarray(times_ms, dtype=np.float64)
    mean = float(times.mean())
    return {"batch": batch, "iterations": int(times.size),
            "latency_p50_ms": float(np.percentile(times, 50)),
            "latency_p90_ms": float(np.percentile(times, 90)),
            "latency_p99_ms": float(np.percentile(times, 99)),
            "latency_mean_ms": mean, "latency_min_ms": float(times.min()),
            "throughput": batch * 1e3 / float(np.percentile(times, 50))}


def profile_batches(profile: Mapping[str, int]) -> List[int]:
    """min, opt, max without repeats, in that order."""
    return sorted({int(profile["min"]), int(profile["opt"]), int(profile["max"])})


# windows whose medians differ by less than this agree whatever their ratio: timer resolution
NOISE_FLOOR_MS = 0.005


def window_agreement(times_ms: Sequence[float], windows: int, tolerance: float) -> Dict[str, Any]:
    """Split a block of timings (in measurement order) into `windows` consecutive windows: the
    block is stable if their medians agree within `tolerance` (a fraction of the smallest)."""
    chunks = [chunk for chunk in np.array_split(np.asarray(times_ms, dtype=np.float64), windows)
              if chunk.size]
    medians = [float(np.median(chunk)) for chunk in chunks]
    low, high = min(medians), max(medians)
    spread = (high - low) / low if low > 0 else float("inf")
    return {"stable": len(chunks) == windows and (spread <= tolerance
                                                  or high - low <= NOISE_FLOOR_MS),
            "spread": spread, "window_p50_ms": medians}


def judged(agreement: Dict[str, Any], cpu_wait: Optional[float],
           settings: Mapping[str, Any]) -> Dict[str, Any]:
    """A block's agreement with the share of its runnable time spent waiting for a CPU
    (trtflow.contention): windows that agree on a machine that was not free are not stable."""
    busy = contended(cpu_wait, float(settings["max_cpu_wait"]))
    return {**agreement, "cpu_wait_share": cpu_wait, "stable": agreement["stable"] and not busy}


def stable_times(measure_block, settings: Mapping[str, Any]) -> tuple:
    """Blocks of timings until one is stable (window_agreement, and no more than `max_cpu_wait`
    of the time since the first block waiting for a CPU) or `max_seconds` is spent; the last
    block and its agreement, with the number of blocks measured. `measure_block(seconds)` times
    one block within that budget."""
    budget = float(settings["max_seconds"])
    deadline = time.perf_counter() + budget
    blocks = 0
    waited = CpuWait()  # over every block so far: one short block says little
    while True:
        times = measure_block(max(deadline - time.perf_counter(), 0.0) if blocks else budget)
        blocks += 1
        agreement = judged(window_agreement(times, int(settings["windows"]),
                                            float(settings["stability_tolerance"])),
                           waited.share(), settings)
        if agreement["stable"] or time.perf_counter() >= deadline:
            return times, {**agreement, "blocks": blocks}


def time_batch(runner, feed: Mapping[str, np.ndarray], batch: int,
               settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The batch's statistics in the runner's preferred timing mode that works, with each mode's
    p50 beside it (TensorRT: `cuda_graph_latency_p50_ms` and `eager_latency_p50_ms`) and why a
    mode could not run. The reported mode is timed in blocks until its windows agree
    (stable_times): `stable`, `spread` and the windows' medians say how sure the number is."""
    modes = runner.time_modes()
    timings, unavailable, agreement = {}, {}, {}
    for mode in modes:
        def block(seconds: float, mode: str = mode) -> List[float]:
            return runner.time(feed, int(settings["warmup"]), int(settings["iterations"]),
                               seconds, mode=mode)
        try:
            if not timings:  # the mode reported: until stable
                timings[mode], agreement = stable_times(block, settings)
            else:  # the others, beside it: one block
                timings[mode] = block(float(settings["max_seconds"]))
        except TimingModeUnavailable as exc:
            log.warning("%s batch %d: %s; timing the next mode", runner.name, batch, exc)
            unavailable[mode] = str(exc)
    used = next(mode for mode in modes if mode in timings)
    stats: Dict[str, Any] = {**latency_stats(timings[used], batch), **agreement}
    if len(modes) > 1:
        stats["timing_mode"] = used
        for mode, times in timings.items():
            stats[f"{mode}_latency_p50_ms"] = float(np.percentile(times, 50))
        if unavailable:
            stats["timing_unavailable"] = unavailable
    return stats


def measure(runner, inputs: Mapping[str, np.ndarray], batches: Sequence[int],
            settings: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Time `runner` at each batch size on real inputs (the validation set, repeated to fill)."""
    results = []
    for batch in batches:
        stats = time_batch(runner, batch_of(inputs, batch), batch, settings)
        log.info("%s batch %d: p50 %.3f ms, p99 %.3f ms, %.1f samples/s (%d iterations%s; %s, "
                 "windows %s ms, spread %.1f%%, %s, %d block(s))", runner.name, batch,
                 stats["latency_p50_ms"], stats["latency_p99_ms"], stats["throughput"],
                 stats["iterations"], f", {stats['timing_mode']}" if "timing_mode" in stats else "",
                 "stable" if stats["stable"] else "UNSTABLE",
                 "/".join(f"{m:.3g}" for m in stats["window_p50_ms"]), 100 * stats["spread"],
                 cpu_wait_text(stats["cpu_wait_share"]), stats["blocks"])
        results.append(stats)
    return results


def cpu_wait_text(share: Optional[float]) -> str:
    return "CPU wait unknown" if share is None else f"waited for a CPU {share:.0%} of the time"


def layer_profile(runner, inputs: Mapping[str, np.ndarray], batch: int,
                  runs: int) -> Optional[Dict[str, Any]]:
    """The engine's per-layer profile at `batch` (trtflow.profiling), after the timed runs;
    None where the backend has no profiler or `runs` is 0."""
    if runs <= 0:
        return None
    layers = runner.profile_layers(batch_of(inputs, batch), runs)
    if layers is None:
        return None
    profile = summarize_profile(layers, batch, runs)
    shares = ", ".join(f"{name} {group['share']:.0%}" for name, group in
                       sorted(profile["categories"].items(), key=lambda kv: -kv[1]["ms"])
                       if group["ms"] > 0)
    log.info("%s layer profile at batch %d (%d runs, %d layers, %d reformats): %s", runner.name,
             batch, runs, profile["layers_timed"], profile["reformat_layers"], shares)
    return profile
