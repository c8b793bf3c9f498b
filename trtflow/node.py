"""Does this node have what its job needs? (stdlib only; imports the runtime it checks.)

The backend is resolved once per run (trtflow/backend.py); a job that a cluster puts on another
node checks here, before it starts, that the node runs that backend: the same TensorRT version
and GPU kind, the same ONNX Runtime and CPU instruction set, or a CUDA GPU for PyTorch. A job
on the wrong node fails with the node's name, what the run needs and what the node has, instead
of writing artifacts for another backend under this one's paths.
"""
from __future__ import annotations

import socket
from typing import Any, Dict, List

from .errors import TrtflowError

PLACEMENT_FIX = ("send this rule's jobs to nodes that have it (profiles/slurm: the partitions "
                 "in partitions.yaml, or set-resources <rule>: constraint), or pin what the "
                 "nodes have in config (tensorrt.target, onnxruntime.isa)")


def found_tensorrt() -> Dict[str, Any]:
    """This Python's TensorRT and the CUDA GPUs it sees, or an error saying which is missing
    (what workflow_scripts/probe_tensorrt.py reports to the main process as well)."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or a broken install raising OSError
        return {"error": f"cannot import tensorrt ({type(exc).__name__}: {exc})"}
    from . import cuda

    try:
        gpus = cuda.list_devices()
    except Exception as exc:
        return {"tensorrt": tensorrt.__version__, "error": f"no usable CUDA GPU ({exc})"}
    if not gpus:
        return {"tensorrt": tensorrt.__version__, "gpus": [], "error": "no CUDA GPU visible"}
    return {"tensorrt": tensorrt.__version__, "gpus": gpus,
            "compute_capabilities": [gpu["compute_capability"] for gpu in gpus]}


def found_onnxruntime() -> Dict[str, Any]:
    from .cpu import instruction_set, int8_form

    try:
        import onnxruntime
    except Exception as exc:
        return {"error": f"cannot import onnxruntime ({type(exc).__name__}: {exc})"}
    isa = instruction_set()
    return {"onnxruntime": onnxruntime.__version__, "isa": isa, "int8_form": int8_form(isa)}


def found_torch_gpu() -> Dict[str, Any]:
    try:
        import torch
    except Exception as exc:
        return {"error": f"cannot import torch ({type(exc).__name__}: {exc})"}
    if not torch.cuda.is_available():
        return {"error": "PyTorch sees no CUDA GPU"}
    major, minor = torch.cuda.get_device_capability(0)
    return {"compute_capabilities": [f"{major}.{minor}"]}


def mismatches(requirement: Dict[str, Any], found: Dict[str, Any]) -> List[str]:
    """What the node lacks, one phrase each (empty: it can run the job)."""
    if "error" in found:
        return [found["error"]]
    problems = []
    for key in ("tensorrt", "onnxruntime", "isa"):
        if key in requirement and found.get(key) != requirement[key]:
            problems.append(f"{key} {found.get(key)}")
    capability = requirement.get("compute_capability")
    if capability and found.get("compute_capabilities", [None])[0] != capability:
        problems.append(f"GPU compute capability {found.get('compute_capabilities') or 'none'}")
    # an int8 graph for U8S8 saturates where the CPU's int8 form is U8U8 (trtflow/cpu.py)
    if requirement.get("int8_form") == "u8s8" and found.get("int8_form") != "u8s8":
        problems.append(f"a {found.get('isa')} CPU, where int8 U8S8 kernels saturate")
    return problems


def describe(requirement: Dict[str, Any]) -> str:
    if "tensorrt" in requirement:
        return (f"TensorRT {requirement['tensorrt']} and a GPU of compute capability "
                f"{requirement['compute_capability']}")
    if "onnxruntime" in requirement:
        cpu = requirement.get("isa") or f"int8 form {requirement['int8_form']}"
        return f"ONNX Runtime {requirement['onnxruntime']} on a CPU with {cpu}"
    return (f"PyTorch with a CUDA GPU of compute capability {requirement['compute_capability']}")


def check(requirement: Dict[str, Any]) -> None:
    """Raise a TrtflowError naming this node when it cannot run a job with this requirement
    (empty: the job runs anywhere)."""
    if not requirement:
        return
    if "tensorrt" in requirement:
        found = found_tensorrt()
    elif "onnxruntime" in requirement:
        found = found_onnxruntime()
    else:
        found = found_torch_gpu()
    problems = mismatches(requirement, found)
    if problems:
        raise TrtflowError(f"node {socket.gethostname()} cannot run this job: the run's backend "
                           f"needs {describe(requirement)}; this node has "
                           f"{'; '.join(problems)}", fix=PLACEMENT_FIX)
