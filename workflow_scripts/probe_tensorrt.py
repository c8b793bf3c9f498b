#!/usr/bin/env python3
"""Print, as JSON, whether this Python can import tensorrt and which GPUs it sees.

Run under the configured TensorRT Python at workflow parse time (backend: auto / tensorrt)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us


def probe() -> dict:
    result = {"python": sys.executable, "python_version": sys.version.split()[0]}
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or a broken install raising OSError
        result["error"] = f"cannot import tensorrt: {type(exc).__name__}: {exc}"
        return result
    result["tensorrt"] = tensorrt.__version__
    try:
        from trtflow import cuda

        result["gpus"] = cuda.list_devices()
    except Exception as exc:
        result["error"] = f"no usable CUDA GPU: {exc}"
    if not result.get("gpus") and "error" not in result:
        result["error"] = "no CUDA GPU visible"
    return result


if __name__ == "__main__":
    print(json.dumps(probe()))
