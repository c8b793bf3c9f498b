"""Backend choice at workflow parse time: `auto` picks TensorRT when the configured TensorRT
Python imports tensorrt and sees a GPU, else ONNX Runtime, and says which and why.

The choice is made once per run, by the main Snakemake process (on a cluster: the submit host),
or pinned in config (tensorrt.target); jobs that Snakemake starts on other nodes parse the
workflow again and take that resolution from the environment (`TRTFLOW_BACKEND`) instead of
probing the node they landed on. What a job needs from its node is `requirement()`, which the
stage checks there (trtflow/node.py)."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
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
    torch_python: str = ""  # interpreter for the PyTorch-side scripts
    resolved_on: str = field(default_factory=socket.gethostname)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Backend":
        return cls(**json.loads(text))

    def requirement(self, side: str) -> Dict[str, Any]:
        """What a job needs from the node it runs on: `side` backend (the engine, timing and
        validation scripts) or torch (the reference and baselines, on self.device)."""
        if side == "torch":
            if self.device == "cpu":
                return {}
            return {"torch_device": self.device,
                    "compute_capability": self.info["gpus"][0]["compute_capability"]}
        if self.name == "tensorrt":
            return {"tensorrt": self.info["tensorrt"],
                    "compute_capability": self.info["gpus"][0]["compute_capability"]}
        requirement = {"onnxruntime": self.info["onnxruntime"], "int8_form": self.info["int8_form"]}
        if not self.info.get("isa_pinned"):  # a pinned target CPU may differ from the nodes'
            requirement["isa"] = self.info["isa"]
        return requirement


# the main process's resolution, as the environment passes it to the jobs it starts
RESOLVED_ENV = "TRTFLOW_BACKEND"


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
    pinned = isa != "auto"
    isa = isa if pinned else instruction_set()
    return Backend("onnxruntime", f"onnxruntime-{version}-cpu-{isa}", "cpu", torch_python, reason,
                   {"onnxruntime": version, "isa": isa, "int8_form": int8_form(isa),
                    "isa_pinned": pinned}, torch_python)


def tensorrt_tag(info: Dict[str, Any]) -> str:
    gpu = info["gpus"][0]
    return f"tensorrt-{info['tensorrt']}-sm{gpu['compute_capability'].replace('.', '')}"


def pinned_tensorrt(target: Dict[str, str], trt_python: str, torch_python: str) -> Backend:
    """tensorrt.target: the TensorRT version and GPU the run is for, taken as given (no probe),
    so a host without a GPU (a cluster's login node) can launch a TensorRT run."""
    info = {"tensorrt": target["tensorrt"], "pinned": True,
            "gpus": [{"name": target.get("gpu", "pinned GPU"),
                      "compute_capability": target["compute_capability"]}]}
    return Backend("tensorrt", tensorrt_tag(info), "cuda", trt_python,
                   f"tensorrt.target in config: TensorRT {target['tensorrt']} on compute "
                   f"capability {target['compute_capability']} (not probed here)", info, torch_python)


def resolve_backend(config: Dict[str, Any], torch_python: Optional[str] = None) -> Backend:
    torch_python = torch_python or sys.executable
    wanted = config["backend"]
    isa = config.get("onnxruntime", {}).get("isa", "auto")
    if wanted == "onnxruntime":
        return onnxruntime_backend(torch_python, "backend: onnxruntime in config", isa)
    trt_python = config["tensorrt"].get("python") or sys.executable
    if config["tensorrt"].get("target"):
        return pinned_tensorrt(config["tensorrt"]["target"], trt_python, torch_python)
    info = probe_tensorrt(trt_python)
    if "error" not in info:
        gpu = info["gpus"][0]
        return Backend("tensorrt", tensorrt_tag(info), "cuda", trt_python,
                       f"{trt_python} imports TensorRT {info['tensorrt']} and sees {gpu['name']} "
                       f"(compute capability {gpu['compute_capability']})", info, torch_python)
    if wanted == "tensorrt":
        raise TrtflowError(f"backend: tensorrt, but {info['error']}",
                           fix="set tensorrt.python to an interpreter that imports tensorrt on a "
                               "machine with an NVIDIA GPU, or use backend: auto / onnxruntime")
    return onnxruntime_backend(torch_python, f"auto: {info['error']} (tensorrt.python = {trt_python})",
                               isa)


def backend_of_run(config: Dict[str, Any], torch_python: str, main_process: bool) -> Backend:
    """The main process resolves the backend and hands it to the jobs it starts (through their
    environment); a job started elsewhere (a cluster node) takes it from there and never
    re-resolves, so every job of a run writes and reads the same paths."""
    if main_process:
        backend = resolve_backend(config, torch_python)
        os.environ[RESOLVED_ENV] = backend.to_json()
        return backend
    text = os.environ.get(RESOLVED_ENV)
    if not text:
        raise TrtflowError(
            f"this job was started without its run's backend (environment variable {RESOLVED_ENV} "
            f"is not set on {socket.gethostname()})",
            fix="the executor must pass the submitting process's environment to jobs (SLURM: "
                "sbatch --export=ALL, the plugin's default; other executors: the workflow's "
                "`envvars`)")
    try:
        return Backend.from_json(text)
    except (TypeError, ValueError) as exc:
        raise TrtflowError(f"{RESOLVED_ENV} is not a backend resolution: {exc}",
                           fix="do not set it by hand; the main Snakemake process sets it") from exc
