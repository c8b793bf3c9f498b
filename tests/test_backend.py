"""trtflow.backend: backend choice at parse time, on this machine (no importable tensorrt)."""
from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import resnet_entry, tiny_config
from trtflow.cpu import instruction_set, int8_form
from trtflow.backend import (PROBE_SCRIPT, RESOLVED_ENV, Backend, backend_of_run, probe_tensorrt,
                             resolve_backend, tensorrt_tag)
from trtflow.config import validate_config
from trtflow.errors import TrtflowError

ORT_VERSION = metadata.version("onnxruntime")


def tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


pytestmark = pytest.mark.skipif(tensorrt_importable(),
                                reason="these tests describe a machine without tensorrt")


def config(backend: str, **tensorrt: Any) -> Dict[str, Any]:
    return validate_config(tiny_config(backend=backend, tensorrt=tensorrt,
                                       models={"net": resnet_entry({"random": True})}))


def test_backend_onnxruntime_needs_no_probe() -> None:
    chosen = resolve_backend(config("onnxruntime", python="/does/not/exist"), "/usr/bin/python3")
    assert chosen.name == "onnxruntime"
    isa = instruction_set()
    assert chosen.tag == f"onnxruntime-{ORT_VERSION}-cpu-{isa}"
    assert chosen.device == "cpu" and chosen.python == "/usr/bin/python3"
    assert chosen.reason == "backend: onnxruntime in config"
    assert chosen.info == {"onnxruntime": ORT_VERSION, "isa": isa, "int8_form": int8_form(isa),
                           "isa_pinned": False}


def test_onnxruntime_target_isa_from_config_names_the_artifacts() -> None:
    """onnxruntime.isa: int8 graphs and optimised models for another CPU are other artifacts."""
    chosen = resolve_backend(validate_config(tiny_config(
        backend="onnxruntime", onnxruntime={"isa": "avx2"},
        models={"net": resnet_entry({"random": True})})))
    assert chosen.tag == f"onnxruntime-{ORT_VERSION}-cpu-avx2"
    assert chosen.info["int8_form"] == "u8u8"


def test_auto_without_tensorrt_falls_back_to_onnxruntime_and_says_why() -> None:
    chosen = resolve_backend(config("auto"))
    assert chosen.name == "onnxruntime" and chosen.device == "cpu"
    assert chosen.tag == f"onnxruntime-{ORT_VERSION}-cpu-{instruction_set()}"
    assert chosen.python == sys.executable
    assert chosen.reason.startswith("auto: cannot import tensorrt")
    assert "tensorrt" in chosen.reason.lower()
    assert f"(tensorrt.python = {sys.executable})" in chosen.reason


def test_auto_with_a_missing_tensorrt_python_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-python")
    chosen = resolve_backend(config("auto", python=missing))
    assert chosen.name == "onnxruntime"
    assert f"cannot run {missing}" in chosen.reason and "tensorrt.python" in chosen.reason


def test_backend_tensorrt_without_tensorrt_is_an_error() -> None:
    with pytest.raises(TrtflowError) as info:
        resolve_backend(config("tensorrt"))
    assert str(info.value).startswith("backend: tensorrt, but cannot import tensorrt")
    assert "tensorrt.python" in info.value.fix and "backend: auto / onnxruntime" in info.value.fix


def test_probe_reports_the_import_error_as_json() -> None:
    info = probe_tensorrt(sys.executable)
    assert info["python"] == sys.executable
    assert info["error"].startswith("cannot import tensorrt (ModuleNotFoundError")
    assert "gpus" not in info and PROBE_SCRIPT.exists()


def test_probe_of_a_python_that_prints_nothing_is_an_error() -> None:
    info = probe_tensorrt("/bin/false")
    assert set(info) == {"error"} and info["error"].startswith("/bin/false probe failed")


def test_tensorrt_tag_carries_version_and_compute_capability() -> None:
    info = {"tensorrt": "10.3.0", "gpus": [{"index": 0, "name": "NVIDIA H100",
                                            "compute_capability": "9.0"}]}
    assert tensorrt_tag(info) == "tensorrt-10.3.0-sm90"
    info["gpus"][0]["compute_capability"] = "8.7"
    assert tensorrt_tag(info) == "tensorrt-10.3.0-sm87"


H200 = {"tensorrt": "8.6.1", "compute_capability": "9.0", "gpu": "NVIDIA H200"}


def test_a_pinned_tensorrt_target_is_taken_as_given_without_a_probe() -> None:
    """A login node without a GPU launches a TensorRT run: tensorrt.target, no probe (the
    configured TensorRT Python does not even exist here)."""
    chosen = resolve_backend(config("tensorrt", python="/does/not/exist", target=H200),
                             "/usr/bin/python3")
    assert (chosen.name, chosen.tag, chosen.device) == ("tensorrt", "tensorrt-8.6.1-sm90", "cuda")
    assert chosen.python == "/does/not/exist" and chosen.torch_python == "/usr/bin/python3"
    assert chosen.reason.startswith("tensorrt.target in config: TensorRT 8.6.1")
    assert chosen.requirement("backend") == {"tensorrt": "8.6.1", "compute_capability": "9.0"}
    assert chosen.requirement("torch") == {"torch_device": "cuda", "compute_capability": "9.0"}


def test_a_malformed_target_is_a_config_error() -> None:
    with pytest.raises(TrtflowError, match="compute_capability"):
        config("tensorrt", target={"tensorrt": "8.6.1", "compute_capability": "sm90"})


def test_what_an_onnxruntime_job_needs_from_its_node() -> None:
    detected = resolve_backend(config("onnxruntime"))
    assert detected.requirement("backend") == {
        "onnxruntime": ORT_VERSION, "isa": instruction_set(),
        "int8_form": int8_form(instruction_set())}
    assert detected.requirement("torch") == {}  # PyTorch on the CPU runs anywhere
    # a pinned target CPU is the user's choice: nodes need only run its int8 form right
    pinned = resolve_backend(validate_config(tiny_config(
        backend="onnxruntime", onnxruntime={"isa": "avx2"},
        models={"net": resnet_entry({"random": True})})))
    assert pinned.requirement("backend") == {"onnxruntime": ORT_VERSION, "int8_form": "u8u8"}


def test_the_main_process_resolves_and_its_jobs_take_that_resolution(monkeypatch) -> None:
    monkeypatch.delenv(RESOLVED_ENV, raising=False)
    main = backend_of_run(config("onnxruntime"), "/usr/bin/python3", main_process=True)
    handed_over = Backend.from_json(__import__("os").environ[RESOLVED_ENV])
    assert handed_over == main
    # a job on another node: the resolution it is handed, whatever config or node says
    monkeypatch.setenv(RESOLVED_ENV, Backend(
        "tensorrt", "tensorrt-8.6.1-sm90", "cuda", "/opt/trt/python", "pinned",
        {"tensorrt": "8.6.1", "gpus": [{"compute_capability": "9.0"}]}, "/usr/bin/python3",
        "login1").to_json())
    job = backend_of_run(config("auto"), "/other/python", main_process=False)
    assert (job.name, job.tag, job.python, job.torch_python) == (
        "tensorrt", "tensorrt-8.6.1-sm90", "/opt/trt/python", "/usr/bin/python3")
    assert job.resolved_on == "login1"


def test_a_job_without_its_runs_resolution_says_what_the_executor_must_pass(monkeypatch) -> None:
    monkeypatch.delenv(RESOLVED_ENV, raising=False)
    with pytest.raises(TrtflowError) as info:
        backend_of_run(config("auto"), "/usr/bin/python3", main_process=False)
    assert RESOLVED_ENV in str(info.value) and "--export=ALL" in info.value.fix
