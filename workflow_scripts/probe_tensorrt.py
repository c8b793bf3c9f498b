#!/usr/bin/env python3
"""Print, as JSON, whether this Python can import tensorrt and which GPUs it sees.

Run under the configured TensorRT Python at workflow parse time (backend: auto / tensorrt)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us


def probe() -> dict:
    from trtflow.node import found_tensorrt

    return {"python": sys.executable, "python_version": sys.version.split()[0], **found_tensorrt()}


if __name__ == "__main__":
    print(json.dumps(probe()))
