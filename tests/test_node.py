"""trtflow.node: a job checks that its node runs the run's backend (this machine: no GPU)."""
from __future__ import annotations

import socket
from importlib import metadata

import pytest

from trtflow import cpu, node
from trtflow.errors import TrtflowError

ORT_VERSION = metadata.version("onnxruntime")


def onnxruntime_here() -> dict:
    isa = cpu.instruction_set()
    return {"onnxruntime": ORT_VERSION, "isa": isa, "int8_form": cpu.int8_form(isa)}


def refusal(requirement: dict) -> str:
    with pytest.raises(TrtflowError) as info:
        node.check(requirement)
    text = str(info.value)
    assert text.startswith(f"node {socket.gethostname()} cannot run this job")
    assert "partitions.yaml" in info.value.fix
    return text


def test_a_job_that_runs_anywhere_and_one_made_for_this_node_pass() -> None:
    node.check({})
    node.check(onnxruntime_here())


def test_another_instruction_set_is_refused_with_what_each_side_has() -> None:
    other = "avx2" if cpu.instruction_set() != "avx2" else "vnni"
    text = refusal({**onnxruntime_here(), "isa": other})
    assert f"needs ONNX Runtime {ORT_VERSION} on a CPU with {other}" in text
    assert f"this node has isa {cpu.instruction_set()}" in text


def test_another_onnxruntime_version_is_refused() -> None:
    assert "this node has onnxruntime " + ORT_VERSION in refusal(
        {**onnxruntime_here(), "onnxruntime": "0.0.1"})


def test_a_u8s8_int8_graph_is_refused_where_it_saturates(monkeypatch) -> None:
    """A pinned VNNI target's U8S8 graphs on an AVX2 node would saturate (trtflow/cpu.py)."""
    monkeypatch.setattr(cpu, "instruction_set", lambda *a, **k: "avx2")
    text = refusal({"onnxruntime": ORT_VERSION, "int8_form": "u8s8"})
    assert "a avx2 CPU, where int8 U8S8 kernels saturate" in text
    node.check({"onnxruntime": ORT_VERSION, "int8_form": "u8u8"})


def test_a_tensorrt_job_on_a_node_without_tensorrt_names_both() -> None:
    text = refusal({"tensorrt": "8.6.1", "compute_capability": "9.0"})
    assert "needs TensorRT 8.6.1 and a GPU of compute capability 9.0" in text
    assert "cannot import tensorrt" in text


def test_a_pytorch_gpu_job_on_a_cpu_node_is_refused() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert "PyTorch sees no CUDA GPU" in refusal({"torch_device": "cuda", "compute_capability": "9.0"})


def test_mismatches_compare_the_first_visible_gpu() -> None:
    wanted = {"tensorrt": "8.6.1", "compute_capability": "9.0"}
    assert node.mismatches(wanted, {"tensorrt": "8.6.1", "compute_capabilities": ["9.0"]}) == []
    assert node.mismatches(wanted, {"tensorrt": "10.3.0", "compute_capabilities": ["8.0"]}) == [
        "tensorrt 10.3.0", "GPU compute capability ['8.0']"]
