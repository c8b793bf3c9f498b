"""Backends behind one small interface (build, load, infer, time), after Polygraphy's runners.

Importing this package imports no backend: `get_backend(name)` imports the one asked for, so the
TensorRT Python (tensorrt + numpy only) can use it without onnxruntime or torch installed.
"""
from __future__ import annotations

import importlib
from types import ModuleType

BACKEND_MODULES = {"onnxruntime": "trtflow.runners.onnxruntime", "tensorrt": "trtflow.runners.tensorrt"}


def get_backend(name: str) -> ModuleType:
    """The backend module: it exposes `build_engine(...)` and `EngineRunner`."""
    if name not in BACKEND_MODULES:
        raise ValueError(f"unknown backend '{name}' (known: {sorted(BACKEND_MODULES)})")
    return importlib.import_module(BACKEND_MODULES[name])
