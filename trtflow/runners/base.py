"""The runner interface and the input checks every backend shares (numpy + stdlib only)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import TrtflowError


@dataclass(frozen=True)
class TensorSpec:
    """A graph or engine I/O tensor: numpy dtype name and shape (-1 for a dynamic axis)."""

    name: str
    dtype: str
    shape: List[int]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def check_feed(feed: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], where: str,
               batch_range: Optional[Sequence[int]] = None) -> None:
    """Refuse any input whose name, dtype or shape does not match the engine's I/O.

    Engines do not convert dtypes: an int64 array bound to an int32 input reads as garbage (often
    zeros) without an error, so a mismatch must stop here with a clear message.
    """
    expected = {s.name: s for s in specs}
    missing = sorted(set(expected) - set(feed))
    extra = sorted(set(feed) - set(expected))
    if missing or extra:
        raise TrtflowError(f"{where}: inputs do not match the engine: missing {missing}, "
                           f"unexpected {extra}", fix=f"feed exactly {sorted(expected)}")
    for name, array in feed.items():
        spec = expected[name]
        if np.dtype(array.dtype) != np.dtype(spec.dtype):
            raise TrtflowError(
                f"{where}: input '{name}' is {np.dtype(array.dtype).name} but the engine takes "
                f"{spec.dtype}", fix=f"convert it with array.astype(np.{spec.dtype}) first, or "
                "re-export the model with that input dtype")
        if len(array.shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, array.shape)):
            raise TrtflowError(f"{where}: input '{name}' has shape {list(array.shape)}, the engine "
                               f"takes {spec.shape} (-1 = any)", fix="feed the configured shape")
        if batch_range is not None and not batch_range[0] <= array.shape[0] <= batch_range[1]:
            raise TrtflowError(f"{where}: batch {array.shape[0]} of input '{name}' is outside the "
                               f"engine's profile {list(batch_range)}",
                               fix="use a batch inside the profile, or add a batch profile")


def adapt_feed(feed: Mapping[str, np.ndarray], specs: Sequence[TensorSpec],
               where: str) -> Dict[str, np.ndarray]:
    """Cast integer inputs to the engine's narrower integer type, explicitly and checked.

    The patch stage turns int64 graph inputs into int32 for TensorRT; the workflow's own data
    (the reference set) stays int64, so it is converted here, refusing values that do not fit.
    Any other mismatch is left for check_feed to refuse.
    """
    wanted = {s.name: np.dtype(s.dtype) for s in specs}
    adapted = {}
    for name, array in feed.items():
        target = wanted.get(name)
        if (target is not None and array.dtype != target and np.issubdtype(array.dtype, np.integer)
                and np.issubdtype(target, np.integer)):
            info = np.iinfo(target)
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise TrtflowError(f"{where}: input '{name}' has values outside {target.name}",
                                   fix="keep the values in range, or set int64_inputs_to_int32: never")
            array = array.astype(target)
        adapted[name] = array
    return adapted


class TimingModeUnavailable(TrtflowError):
    """A timing mode this engine cannot run in (a CUDA graph that cannot be captured)."""


class Runner:
    """load() -> infer(feed) -> time(feed) -> close(). Subclasses override load/infer/close;
    time() defaults to host timing around infer(), which is right for synchronous backends."""

    name = "runner"
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]

    def load(self) -> "Runner":
        raise NotImplementedError

    def infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def time_modes(self) -> List[str]:
        """The ways this runner can time an inference, preferred first (TensorRT: CUDA-graph
        replay, then eager enqueue); the benchmark records each and reports the first."""
        return ["default"]

    def time(self, feed: Mapping[str, np.ndarray], warmup: int, iterations: int,
             max_seconds: float, mode: Optional[str] = None) -> List[float]:
        """Latencies in milliseconds of repeated infer() calls on one feed."""
        return host_timing(lambda: self.infer(feed), warmup, iterations, max_seconds)

    def profile_layers(self, feed: Mapping[str, np.ndarray],
                       runs: int) -> Optional[Dict[str, Dict[str, Any]]]:
        """Per-layer times of `runs` inferences, outside the timed runs: layer name ->
        {"times_ms": [...], "type": ..., "precision": ...} (trtflow.profiling reads it); None
        where the backend has no profiler."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> "Runner":
        return self.load()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def timing_loop(one_run_ms: Callable[[], float], warmup: int, iterations: int,
                max_seconds: float) -> List[float]:
    """Warm up, then collect `iterations` timings (at least 3, at most `max_seconds` of them).

    `one_run_ms` runs once and returns its time in milliseconds (host clock or device events)."""
    for _ in range(warmup):
        one_run_ms()
    times: List[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < iterations and (len(times) < 3 or time.perf_counter() < deadline):
        times.append(one_run_ms())
    return times


def host_timing(call: Callable[[], Any], warmup: int, iterations: int,
                max_seconds: float) -> List[float]:
    """Host-clock timing, right for synchronous calls."""
    def one() -> float:
        start = time.perf_counter()
        call()
        return (time.perf_counter() - start) * 1e3

    return timing_loop(one, warmup, iterations, max_seconds)


def infer_in_chunks(runner: Runner, inputs: Mapping[str, np.ndarray], max_batch: Optional[int],
                    min_batch: int = 1) -> Dict[str, np.ndarray]:
    """runner.infer over the samples in batches the engine takes: at most `max_batch` at a time
    (all at once for None), and a batch shorter than `min_batch` (a profile {min: 16, ...} with 8
    validation samples, a static-batch engine) padded by repeating its own samples. Only the real
    samples' outputs are kept, so every sample is compared once, whatever the profile. An output
    without the batch axis (a scalar or a shape, which debug_precision's marked graphs have) is
    the first chunk's."""
    count = next(iter(inputs.values())).shape[0]
    step = max_batch or count
    pieces, batched = [], set()
    for start in range(0, count, step):
        real = min(step, count - start)
        take = np.arange(max(real, min_batch)) % real + start  # repeat the chunk to fill
        outputs = runner.infer({k: np.ascontiguousarray(v[take]) for k, v in inputs.items()})
        if not pieces:
            batched = {name for name, value in outputs.items()
                       if value.ndim and value.shape[0] == len(take)}
        pieces.append({name: value[:real] if name in batched else value
                       for name, value in outputs.items()})
    return {name: np.concatenate([p[name] for p in pieces]) if name in batched else pieces[0][name]
            for name in pieces[0]}
