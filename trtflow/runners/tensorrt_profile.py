"""TensorRT's per-layer profile: an IProfiler on the execution context, for a few inference runs
outside the timed ones (a profiler makes every layer report, which slows and serialises the
run, and no CUDA graph can be captured with one attached).

Pure Python beside the `trt` module handed in: it runs in the Python that has TensorRT. The
grouping of layers into categories is trtflow.profiling's.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Sequence

log = logging.getLogger(__name__)


def layer_profiler(trt):
    """A trt.IProfiler that keeps every report: layer name -> its times in ms, one per run.
    The class is made per call because its base class comes from the tensorrt module."""

    class LayerTimes(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.times: Dict[str, List[float]] = {}

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.times.setdefault(layer_name, []).append(float(ms))

    return LayerTimes()


def profile_runs(trt, context, execute: Callable[[], None], synchronize: Callable[[], None],
                 runs: int) -> Dict[str, List[float]]:
    """Attach a profiler, run `execute` `runs` times (each synchronised: TensorRT reports an
    enqueued run's layers once its stream is done), and return what it reported."""
    profiler = layer_profiler(trt)
    context.profiler = profiler
    for _ in range(runs):
        execute()
        synchronize()
    return profiler.times


def annotate(times: Mapping[str, Sequence[float]],
             layers: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Each profiled layer with its type and precision from the engine inspector's table (the
    sidecar's `layers`); a layer the inspector does not list (TensorRT 8.6 reports some
    reformats only to the profiler) keeps an empty type and is categorised by its name."""
    table = {str(row.get("name", "")): row for row in layers}
    unknown = [name for name in times if name not in table]
    if unknown:
        log.info("%d profiled layer(s) not in the inspector's table, e.g. %s", len(unknown),
                 unknown[0])
    return {name: {"times_ms": list(values), "type": table.get(name, {}).get("type", ""),
                   "precision": table.get(name, {}).get("precision", "")}
            for name, values in times.items()}
