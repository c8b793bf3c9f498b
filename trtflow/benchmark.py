"""Benchmark stage: latency percentiles and throughput at a profile's min/opt/max batch, and the
engine's per-layer profile at the opt batch."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

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


def time_batch(runner, feed: Mapping[str, np.ndarray], batch: int,
               settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The batch's statistics in the runner's preferred timing mode that works, with each mode's
    p50 beside it (TensorRT: `cuda_graph_latency_p50_ms` and `eager_latency_p50_ms`) and why a
    mode could not run."""
    modes = runner.time_modes()
    timings, unavailable = {}, {}
    for mode in modes:
        try:
            timings[mode] = runner.time(feed, int(settings["warmup"]), int(settings["iterations"]),
                                        float(settings["max_seconds"]), mode=mode)
        except TimingModeUnavailable as exc:
            log.warning("%s batch %d: %s; timing the next mode", runner.name, batch, exc)
            unavailable[mode] = str(exc)
    used = next(mode for mode in modes if mode in timings)
    stats: Dict[str, Any] = latency_stats(timings[used], batch)
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
        log.info("%s batch %d: p50 %.3f ms, p99 %.3f ms, %.1f samples/s (%d iterations%s)",
                 runner.name, batch, stats["latency_p50_ms"], stats["latency_p99_ms"],
                 stats["throughput"], stats["iterations"],
                 f", {stats['timing_mode']}" if "timing_mode" in stats else "")
        results.append(stats)
    return results


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
