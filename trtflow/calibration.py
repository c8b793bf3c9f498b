"""int8 calibration: the sample set, the activation ranges, and a cache of those ranges.

Ranges are computed with ONNX Runtime's own calibrators over every float tensor of the graph and
saved in ONNX Runtime's calibration-cache form (`quantize_static(calibration_cache_path=...)`).
The cache file is named after what the ranges depend on (the graph's bytes, the samples' bytes,
the method and its settings), so a rerun that only changes Q/DQ placement, a keep_precision
list or the quantiser's code does not calibrate again, and a changed graph or data set never
reuses stale ranges.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import TrtflowError
from .io import atomic_path, sha256_file

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


def activation_ranges(graph: Path, arrays: Mapping[str, np.ndarray], method: str,
                      symmetric: bool, percentile: float, cache_dir: Path,
                      model: str) -> Tuple[Path, str]:
    """ONNX Runtime's calibration cache (a JSON of per-tensor ranges) for `graph` on `arrays`,
    computed once per graph, data and settings and reused from `cache_dir` after that; and the
    method that made it (min/max where a histogram cannot be made, see _calibrate)."""
    settings = {"method": method, **_calibrator_options(method, symmetric, percentile)}
    path = Path(cache_dir) / f"{model}-{method}-{cache_key(graph, arrays, settings)}.json"
    count = next(iter(arrays.values())).shape[0]
    cached = cached_method(path)
    if cached is not None:
        log.info("calibration: %s, %d samples: cached ranges %s", method, count, path)
        return path, cached
    log.info("calibration: %s over %d samples of %s (every float tensor; cached as %s)",
             method, count, graph.name, path)
    start = time.perf_counter()
    ranges = _calibrate(graph, arrays, method, symmetric, percentile, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        from onnxruntime.quantization.calibrate import save_tensors_data

        save_tensors_data(ranges, tmp)
    log.info("calibration: %d tensors in %.1f s", len(ranges.data), time.perf_counter() - start)
    return path, _method_name(ranges.calibration_method)


def cached_method(path: Path) -> Optional[str]:
    """The method of the cache entry `path`; None when there is none, or when it does not decode
    (truncated, edited, a full disk): then it is named, removed and made again, rather than failing
    every run that reads it."""
    if not path.is_file():
        return None
    from onnxruntime.quantization.calibrate import load_tensors_data

    try:
        return _method_name(load_tensors_data(path).calibration_method)
    except Exception as exc:  # json, a missing key, a wrong type: every decoder has its own
        log.warning("calibration: the cached ranges %s are corrupt (%s: %s); removed, "
                    "calibrating again", path, type(exc).__name__, str(exc)[:200])
        path.unlink(missing_ok=True)
        return None


def _calibrate(graph: Path, arrays: Mapping[str, np.ndarray], method: str, symmetric: bool,
               percentile: float, model: str):
    from onnxruntime.quantization.calibrate import create_calibrator

    with tempfile.TemporaryDirectory(prefix="trtflow-calibration-") as scratch:
        try:
            calibrator = create_calibrator(graph, None,
                                           augmented_model_path=f"{scratch}/augmented.onnx",
                                           calibrate_method=method_enum(method),
                                           extra_options=_calibrator_options(method, symmetric,
                                                                             percentile))
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
                return calibrator.compute_data()
        except ValueError as exc:
            # numpy cannot make 2048 float32 bins over a range of ~1e-11 (a layer whose outputs
            # all but vanish): such a tensor has no histogram, but it has a min and a max
            if method == "minmax" or "bins" not in str(exc):
                raise TrtflowError(f"int8 calibration ({method}) failed: {exc}", model=model,
                                   path=str(graph), fix="check the calibration inputs "
                                   "(calibration.images, the model's inputs)") from exc
            log.warning("calibration: %s needs a histogram of every tensor, and %s; calibrating "
                        "with minmax instead", method, exc)
            return _calibrate(graph, arrays, "minmax", symmetric, percentile, model)


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
                if collector is not None and hasattr(collector, "histogram_dict"):
                    collector.histogram_dict.pop(name, None)
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
