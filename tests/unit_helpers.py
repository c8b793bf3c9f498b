"""Shared building blocks of the unit tests: real weights, real exports, real ONNX Runtime runs.

Not a test module (pytest collects test_*.py only). Each helper goes through the library's own
stages, so a fixture built with them is the artifact the workflow would make.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from conftest import resnet_entry, tiny_config, token_entry


def validated_spec(model: str, entry: Dict[str, Any]) -> Dict[str, Any]:
    """The model's entry after schema validation (defaults filled in), as the stages see it."""
    from trtflow.config import validate_config

    return validate_config(tiny_config(models={model: entry}))["models"][model]


def calibration_options(cache_dir: Path, **overrides: Any) -> Dict[str, Any]:
    """The config's calibration block with the schema's defaults, caching ranges in cache_dir."""
    from trtflow.config import validate_config

    options = validate_config(tiny_config(models={"resnet": resnet_entry({"random": True})},
                                          calibration=overrides))["calibration"]
    return {**options, "cache_dir": str(cache_dir)}


def resnet_spec(size: int = 32, seed: int = 0) -> Dict[str, Any]:
    return validated_spec("resnet", resnet_entry({"random": True, "seed": seed}, size=size))


def token_spec(seed: int = 0) -> Dict[str, Any]:
    return validated_spec("tokens", token_entry({"random": True, "seed": seed}))


def prepared_weights(directory: Path, model: str, spec: Mapping[str, Any]) -> Path:
    """Run the weights stage; return the saved state_dict."""
    from trtflow.weights import prepare_weights

    output = directory / f"{model}.pt"
    prepare_weights(model, spec, directory / "cache", output, directory / f"{model}.weights.json")
    return output


def exported(directory: Path, model: str, spec: Mapping[str, Any],
             opset: int = 17) -> Tuple[Path, Path]:
    """Weights stage then export stage; return (weights .pt, exported .onnx)."""
    from trtflow.export import export_onnx

    weights = prepared_weights(directory, model, spec)
    onnx_path = directory / f"{model}.onnx"
    export_onnx(model, spec, str(weights), onnx_path, directory / f"{model}.export.json", opset)
    return weights, onnx_path


def ort_engine(directory: Path, model: str, spec: Mapping[str, Any],
               profile: Mapping[str, int]) -> Path:
    """The model exported and built into an fp32 ONNX Runtime engine (one thread) for `profile`;
    its sidecar beside it (engine.json)."""
    from trtflow.runners.onnxruntime import build_engine

    _, onnx_path = exported(directory, model, spec)
    engine = directory / "engine.onnx"
    build_engine(onnx_path, engine, directory / "engine.json", model=model, precision="fp32",
                 batch_profile=dict(profile), profile_name="p",
                 options={"intra_op_threads": 1, "graph_optimization_level": "all"})
    return engine


def reference_module(model: str, spec: Mapping[str, Any], weights: Path):
    """The trained PyTorch model wrapped like the reference stage wraps it (tuple outputs)."""
    from trtflow.models import eval_wrapper, load_trained_model

    return eval_wrapper(load_trained_model(model, spec, str(weights)))


def torch_outputs(module, feed: Mapping[str, np.ndarray]) -> List[np.ndarray]:
    import torch

    with torch.no_grad():
        return [o.numpy() for o in module(*(torch.from_numpy(v) for v in feed.values()))]


def ort_run(onnx_path: Path, feed: Mapping[str, np.ndarray]) -> List[np.ndarray]:
    """Plain ONNX Runtime CPU inference of an ONNX file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(feed))


def image_batch(batch: int, size: int = 32, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.normal(size=(batch, 3, size, size)).astype(np.float32)}


def token_batch(batch: int, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"tokens": rng.integers(0, 100, size=(batch, 16)).astype(np.int64)}


def rel_l2(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref))
