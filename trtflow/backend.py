"""Backend choice at workflow parse time: `auto` picks TensorRT when the configured TensorRT
Python imports tensorrt and sees a GPU, else ONNX Runtime, and says which and why."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from .errors import TrtflowError

PROBE_SCRIPT = Path(__file__).resolve().parent.parent / "workflow_scripts" / "probe_tensorrt.py"


@dataclass
class Backend:
    name: str              # onnxruntime | tensorrt
    tag: str               # path segment carrying backend version and device, e.g. tensorrt-8.6.0-sm90
    device: str            # where PyTorch runs the reference and baselines: cpu | cuda
    python: str            # interpreter for the backend-side scripts
    reason: str
    info: Dict[str, Any] = field(default_factory=dict)


# what the PyTorch-side scripts import (config key `python`)
TORCH_SIDE_MODULES = ("torch", "torchvision", "onnx", "onnxruntime", "numpy")


def check_interpreter(key: str, python: str, modules: Sequence[str], timeout: float = 180.0) -> None:
    """A configured interpreter must exist, run and import what its scripts need: say so at parse
    time, naming the config key, rather than in the first job that runs it."""
    import shutil

    found = shutil.which(python)
    if found is None:
        raise TrtflowError(f"{key}: '{python}' is not an executable file",
                           fix=f"set {key} to the path of a Python interpreter (or null)")
    try:
        done = subprocess.run([found, "-c", "import " + ", ".join(modules)], capture_output=True,
                              text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TrtflowError(f"{key}: cannot run '{python}': {exc}",
                           fix=f"set {key} to a working Python interpreter (or null)") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise TrtflowError(f"{key}: '{python}' cannot import {', '.join(modules)}: {last}",
                           fix=f"install them there (pip install -e '.[workflow]'), or point {key} "
                               "at the interpreter that has them")


def probe_tensorrt(python: str, timeout: float = 180.0) -> Dict[str, Any]:
    try:
        done = subprocess.run([python, str(PROBE_SCRIPT)], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"cannot run {python}: {exc}"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": f"{python} probe failed: {(done.stderr or done.stdout).strip()[-300:]}"}


def onnxruntime_backend(torch_python: str, reason: str, isa: str = "auto") -> Backend:
    """ONNX Runtime on this CPU; `isa` (config onnxruntime.isa) names another target CPU's
    instruction set. The tag carries it: int8 graphs and optimised models are made for it."""
    from .cpu import instruction_set, int8_form

    try:
        version = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError as exc:
        raise TrtflowError("onnxruntime is not installed", fix="pip install -e . (see README)") from exc
    isa = instruction_set() if isa == "auto" else isa
    return Backend("onnxruntime", f"onnxruntime-{version}-cpu-{isa}", "cpu", torch_python, reason,
                   {"onnxruntime": version, "isa": isa, "int8_form": int8_form(isa)})


def tensorrt_tag(info: Dict[str, Any]) -> str:
    gpu = info["gpus"][0]
    return f"tensorrt-{info['tensorrt']}-sm{gpu['compute_capability'].replace('.', '')}"


def resolve_backend(config: Dict[str, Any], torch_python: Optional[str] = None) -> Backend:
    torch_python = torch_python or sys.executable
    wanted = config["backend"]
    isa = config.get("onnxruntime", {}).get("isa", "auto")
    if wanted == "onnxruntime":
        return onnxruntime_backend(torch_python, "backend: onnxruntime in config", isa)
    trt_python = config["tensorrt"].get("python") or sys.executable
    info = probe_tensorrt(trt_python)
    if "error" not in info:
        gpu = info["gpus"][0]
        return Backend("tensorrt", tensorrt_tag(info), "cuda", trt_python,
                       f"{trt_python} imports TensorRT {info['tensorrt']} and sees {gpu['name']} "
                       f"(compute capability {gpu['compute_capability']})", info)
    if wanted == "tensorrt":
        raise TrtflowError(f"backend: tensorrt, but {info['error']}",
                           fix="set tensorrt.python to an interpreter that imports tensorrt on a "
                               "machine with an NVIDIA GPU, or use backend: auto / onnxruntime")
    return onnxruntime_backend(torch_python, f"auto: {info['error']} (tensorrt.python = {trt_python})",
                               isa)
