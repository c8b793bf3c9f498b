"""Benchmark stage: latency percentiles and throughput at a profile's min/opt/max batch."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from .data import batch_of

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


def measure(runner, inputs: Mapping[str, np.ndarray], batches: Sequence[int],
            settings: Mapping[str, Any]) -> List[Dict[str, float]]:
    """Time `runner` at each batch size on real inputs (the validation set, repeated to fill)."""
    results = []
    for batch in batches:
        feed = batch_of(inputs, batch)
        times = runner.time(feed, int(settings["warmup"]), int(settings["iterations"]),
                            float(settings["max_seconds"]))
        stats = latency_stats(times, batch)
        log.info("%s batch %d: p50 %.3f ms, p99 %.3f ms, %.1f samples/s (%d iterations)",
                 runner.name, batch, stats["latency_p50_ms"], stats["latency_p99_ms"],
                 stats["throughput"], stats["iterations"])
        results.append(stats)
    return results
