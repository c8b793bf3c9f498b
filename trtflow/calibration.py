"""int8 calibration: the sample set, the activation ranges, and a cache of those ranges.

Ranges are computed with ONNX Runtime's own calibrators over every float tensor of the graph and
saved in ONNX Runtime's calibration-cache form (`quantize_static(calibration_cache_path=...)`).
The cache file is keyed by what the ranges depend on (the graph's bytes, the samples' bytes,
the method and its settings), so a rerun that only changes Q/DQ placement, a keep_precision
list or the quantiser's code does not calibrate again, and a changed graph or data set never
reuses stale ranges; its name also says the method that really made the ranges.

Percentile and entropy need a histogram of each tensor; numpy cannot make one over a range
too narrow for its bins (a layer whose outputs all but vanish). Such a tensor, and only it,
gets its min/max range instead; the others keep the method asked for (`Ranges.fallback`).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from .errors import TrtflowError
from .io import atomic_path, load_onnx, sha256_file

log = logging.getLogger(__name__)

# Measured on MobileNetV2 with ImageNet weights (benchmarks/cpu/int8-calibration.md): the 99.99th
# percentile of |activation| beats min/max (a few outliers stretch the range) and entropy on both
# TensorRT's symmetric form and ONNX Runtime's u8 forms.
DEFAULT_METHOD = {"tensorrt": "percentile", "onnxruntime": "percentile"}
# TensorRT's own entropy calibrator: 2048 histogram bins folded into 128 (one sign of int8).
# ONNX Runtime's quantize_static leaves its entropy calibrator at 128/128 bins, where the search
# has a single candidate (the maximum): entropy then silently equals min/max.
HISTOGRAM_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128


class ArrayCalibrationReader:
    """onnxruntime CalibrationDataReader over in-memory arrays, one sample per call."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._arrays = arrays
        self._count = next(iter(arrays.values())).shape[0]
        self._iter: Iterator[int] = iter(range(self._count))

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        index = next(self._iter, None)
        if index is None:
            return None
        return {name: array[index:index + 1] for name, array in self._arrays.items()}

    def rewind(self) -> None:
        self._iter = iter(range(self._count))

    def __len__(self) -> int:
        return self._count


def resolve_method(method: Any, backend: str) -> str:
    """The calibration method for this backend: a name, a per-backend mapping, or auto."""
    if isinstance(method, Mapping):
        method = method.get(backend, "auto")
    return DEFAULT_METHOD[backend] if method in (None, "auto") else str(method)


def calibration_arrays(model: str, specs: Sequence[Mapping[str, Any]], num_samples: int,
                       seed: int, images: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The calibration inputs: random crops and flips of the sample photos, or of the images in
    the user's folder `images` (for photo inputs), synthetic values otherwise."""
    from .data import input_set, photos_in_folder

    photos = photos_in_folder(images, model) if images else None
    arrays, _ = input_set(model, specs, num_samples, "calibration", seed, photos=photos)
    return arrays


def _calibrator_options(method: str, symmetric: bool, percentile: float) -> Dict[str, Any]:
    if method == "percentile":
        return {"symmetric": symmetric, "num_bins": HISTOGRAM_BINS, "percentile": percentile}
    if method == "entropy":
        return {"symmetric": symmetric, "num_bins": HISTOGRAM_BINS,
                "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
    return {"symmetric": symmetric}


def cache_key(graph: Path, arrays: Mapping[str, np.ndarray], settings: Mapping[str, Any]) -> str:
    """sha256 over the graph file, the samples (names, dtypes, shapes, bytes) and the settings."""
    import onnxruntime

    digest = hashlib.sha256(sha256_file(graph).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(json.dumps({**settings, "onnxruntime": onnxruntime.__version__},
                             sort_keys=True).encode())
    return digest.hexdigest()[:24]


class Ranges(NamedTuple):
    """A calibration cache and how it was made: `method` made every tensor's range but those in
    `fallback` (tensor -> the method that made its range instead: minmax)."""

    path: Path
    method: str
    fallback: Dict[str, str]

    @property
    def methods(self) -> str:
        """The methods really used, as the cache file is named: 'percentile', 'minmax',
        'percentile+minmax' (some tensors min/max)."""
        return f"{self.method}+minmax" if self.fallback and self.method != "minmax" else self.method


def activation_ranges(graph: Path, arrays: Mapping[str, np.ndarray], method: str,
                      symmetric: bool, percentile: float, cache_dir: Path,
                      model: str) -> Ranges:
    """ONNX Runtime's calibration cache (a JSON of per-tensor ranges) for `graph` on `arrays`,
    computed once per graph, data and settings and reused from `cache_dir` after that, named
    `<model>-<methods really used>-<key>.json`; and how its ranges were made."""
    settings = {"method": method, **_calibrator_options(method, symmetric, percentile)}
    key = cache_key(graph, arrays, settings)
    count = next(iter(arrays.values())).shape[0]
    for candidate in sorted(Path(cache_dir).glob(f"{model}-*-{key}.json")):
        ranges = cached_ranges(candidate)
        if ranges is not None:
            log.info("calibration: %s, %d samples: cached ranges %s", method, count, candidate)
            _log_fallback(ranges)
            return ranges
    log.info("calibration: %s over %d samples of %s (every float tensor; cached in %s)",
             method, count, graph.name, cache_dir)
    start = time.perf_counter()
    data = _calibrate(graph, arrays, method, symmetric, percentile, model)
    made = _described(Path(cache_dir) / "unnamed.json", data)
    path = Path(cache_dir) / f"{model}-{made.methods}-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        from onnxruntime.quantization.calibrate import save_tensors_data

        save_tensors_data(data, tmp)
    log.info("calibration: %d tensors in %.1f s, cached as %s", len(data.data),
             time.perf_counter() - start, path)
    ranges = made._replace(path=path)
    _log_fallback(ranges)
    return ranges


def _described(path: Path, data) -> Ranges:
    """What made a cache's ranges: its method, and the tensors of a histogram method that have
    no histogram (their range is min/max)."""
    method = _method_name(data.calibration_method)
    fallback = {} if method == "minmax" else {
        name: "minmax" for name, tensor in data.data.items() if not hasattr(tensor, "hist")}
    return Ranges(path, method, fallback)


def _log_fallback(ranges: Ranges) -> None:
    if ranges.fallback:
        names = sorted(ranges.fallback)
        log.warning("calibration: %d tensors have no %s histogram (their range is too narrow "
                    "for %d bins) and got min/max ranges; the other tensors kept %s: %s%s",
                    len(names), ranges.method, HISTOGRAM_BINS, ranges.method,
                    ", ".join(names[:5]), " ..." if len(names) > 5 else "")


def cached_ranges(path: Path) -> Optional[Ranges]:
    """The ranges of the cache entry `path` and how they were made; None when there is none, or
    when it does not decode (truncated, edited, a full disk): then it is named, removed and made
    again, rather than failing every run that reads it."""
    if not path.is_file():
        return None
    from onnxruntime.quantization.calibrate import load_tensors_data

    try:
        return _described(path, load_tensors_data(path))
    except Exception as exc:  # json, a missing key, a wrong type: every decoder has its own
        log.warning("calibration: the cached ranges %s are corrupt (%s: %s); removed, "
                    "calibrating again", path, type(exc).__name__, str(exc)[:200])
        path.unlink(missing_ok=True)
        return None


def onnxruntime_graph(graph: Path, scratch: Path) -> Path:
    """`graph`, or where it holds TensorRT plugin nodes (patch.efficient_nms) a copy in `scratch`
    with the standard ops they stand for: ONNX Runtime measures the same tensors' ranges."""
    import onnx

    from .nms import has_plugins, onnxruntime_runnable

    model = load_onnx(graph)
    if not has_plugins(model):
        return graph
    runnable = scratch / f"runnable-{Path(graph).name}"
    onnx.save(onnxruntime_runnable(model), str(runnable))
    return runnable


def _calibrate(graph: Path, arrays: Mapping[str, np.ndarray], method: str, symmetric: bool,
               percentile: float, model: str):
    from onnxruntime.quantization.calibrate import create_calibrator

    with tempfile.TemporaryDirectory(prefix="trtflow-calibration-") as scratch:
        graph = onnxruntime_graph(graph, Path(scratch))
        try:
            calibrator = create_calibrator(graph, None,
                                           augmented_model_path=f"{scratch}/augmented.onnx",
                                           calibrate_method=method_enum(method),
                                           extra_options=_calibrator_options(method, symmetric,
                                                                             percentile))
            if method != "minmax":
                calibrator.collector = _fallback_collector(calibrator, symmetric)
            skipped = _skip_non_finite(calibrator)
            count = next(iter(arrays.values())).shape[0]
            # one sample per pass: ONNX Runtime stacks the intermediate outputs of a pass, which
            # fails where their shapes differ between samples (a detector's per-image boxes and
            # regions), and holding one sample's tensors at a time bounds the memory
            for index in range(count):
                with contextlib.redirect_stdout(io.StringIO()):  # its print() per pass
                    calibrator.collect_data(ArrayCalibrationReader(
                        {name: array[index:index + 1] for name, array in arrays.items()}))
                if (index + 1) % 8 == 0 or index + 1 == count:
                    log.info("calibration: %d / %d samples", index + 1, count)
            if skipped:
                log.info("calibration: no range for %d tensors with inf/nan values or none "
                         "at all for some sample (they stay float): %s", len(skipped), ", ".join(sorted(skipped)[:5]))
            with contextlib.redirect_stdout(io.StringIO()):
                if method != "minmax":
                    return calibrator.collector.tensors_data()
                return calibrator.compute_data()
        except ValueError as exc:
            raise TrtflowError(f"int8 calibration ({method}) failed: {exc}", model=model,
                               path=str(graph), fix="check the calibration inputs "
                               "(calibration.images, the model's inputs)") from exc


def _fallback_collector(calibrator, symmetric: bool):
    """ONNX Runtime's histogram collector, one tensor at a time: a tensor numpy cannot
    histogram (a range of ~1e-11 has no 2048 float32 bins) keeps its running min/max instead,
    and only it; the others keep their histograms (the method asked for)."""
    from onnxruntime.quantization.calibrate import (CalibrationMethod, HistogramCollector,
                                                    TensorData, TensorsData)

    class PerTensorFallback(HistogramCollector):
        def __init__(self) -> None:
            super().__init__(method=calibrator.method, symmetric=calibrator.symmetric,
                             num_bins=calibrator.num_bins,
                             num_quantized_bins=getattr(calibrator, "num_quantized_bins", None),
                             percentile=getattr(calibrator, "percentile", None),
                             scenario=getattr(calibrator, "scenario", "same"))
            self.minmax: Dict[str, List[float]] = {}  # the fallback tensors' running range

        def collect(self, name_to_arr) -> None:
            for tensor, data in name_to_arr.items():
                if tensor not in self.minmax:
                    try:
                        super().collect({tensor: data})
                        continue
                    except ValueError as exc:
                        log.info("calibration: %s: no histogram (%s): min/max range", tensor, exc)
                        earlier = self.histogram_dict.pop(tensor, None)
                        self.minmax[tensor] = ([float(earlier[2]), float(earlier[3])] if earlier
                                               else [math.inf, -math.inf])
                values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in
                                         (data if isinstance(data, list) else [data])])
                if values.size:
                    span = self.minmax[tensor]
                    span[0] = min(span[0], float(np.nanmin(values)))
                    span[1] = max(span[1], float(np.nanmax(values)))

        def forget(self, tensor: str) -> None:
            self.histogram_dict.pop(tensor, None)
            self.minmax.pop(tensor, None)

        def tensors_data(self):
            """The calibrator's compute_data, with the fallback tensors' min/max ranges
            (symmetric as ONNX Runtime's MinMax calibrator makes them for this form)."""
            data: Dict[str, Any] = (dict(self.compute_collection_result()) if self.histogram_dict
                                    else {})
            for tensor, (low, high) in self.minmax.items():
                if symmetric:
                    low, high = -max(abs(low), abs(high)), max(abs(low), abs(high))
                data[tensor] = TensorData(lowest=np.array(low, dtype=np.float32),
                                          highest=np.array(high, dtype=np.float32))
            kind = method_enum(calibrator.method) if self.histogram_dict else CalibrationMethod.MinMax
            return TensorsData(kind, data)

    return PerTensorFallback()


class _FiniteSession:
    """The calibrator's inference session, dropping from calibration every tensor that holds an
    inf or nan (a detector's masked scores, clamps to inf in box decoding) or is empty for some
    sample (no detection in an image): no histogram takes them, and such a tensor is
    post-processing that stays float anyway."""

    def __init__(self, calibrator, skipped: set) -> None:
        self._calibrator = calibrator
        self._session = calibrator.infer_session
        self._names = [o.name for o in self._session.get_outputs()]
        self._skipped = skipped

    def run(self, names, feed):
        outputs = self._session.run(names, feed)
        for name, value in zip(names or self._names, outputs):
            if (name in self._calibrator.tensors_to_calibrate and value.dtype.kind == "f"
                    and (value.size == 0 or not np.isfinite(value).all())):
                self._calibrator.tensors_to_calibrate.discard(name)
                collector = getattr(self._calibrator, "collector", None)
                if hasattr(collector, "forget"):  # histogram methods (_fallback_collector)
                    collector.forget(name)
                self._skipped.add(name)
        return outputs

    def __getattr__(self, attribute: str):
        return getattr(self._session, attribute)


def _skip_non_finite(calibrator) -> set:
    """Histogram calibrators only: min/max takes any values, one sample at a time."""
    skipped: set = set()
    if hasattr(calibrator, "tensors_to_calibrate"):
        calibrator.infer_session = _FiniteSession(calibrator, skipped)
    return skipped


def _method_name(enum) -> str:
    return {method_enum(name): name for name in ("minmax", "entropy", "percentile")}[enum]


def method_enum(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]
