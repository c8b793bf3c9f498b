"""trtflow.runners: the shared input checks, the ONNX Runtime engine runner, the PyTorch runner."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import onnx
import pytest
import torch

from trtflow.errors import TrtflowError
from trtflow.io import read_json
from trtflow.patch import patch_onnx
from trtflow.runners import get_backend
from trtflow.runners.base import Runner, TensorSpec, adapt_feed, check_feed, host_timing
from trtflow.runners.onnxruntime import OnnxRuntimeRunner, build_engine, version
from trtflow.runners.torch import TorchRunner
from unit_helpers import (exported, image_batch, reference_module, resnet_spec, token_batch,
                          token_spec, torch_outputs)

TOKENS_INT32 = [TensorSpec("tokens", "int32", [-1, 16])]
PROFILE = {"min": 1, "opt": 2, "max": 4}


# --- base: check_feed / adapt_feed -------------------------------------------------------------

def test_tensor_spec_to_dict() -> None:
    assert TensorSpec("x", "float32", [-1, 3]).to_dict() == {"name": "x", "dtype": "float32",
                                                             "shape": [-1, 3]}


def test_check_feed_accepts_a_matching_feed() -> None:
    check_feed({"tokens": np.zeros((3, 16), np.int32)}, TOKENS_INT32, "engine e", (1, 4))


def test_check_feed_refuses_int64_for_an_int32_input() -> None:
    with pytest.raises(TrtflowError) as info:
        check_feed({"tokens": np.zeros((2, 16), np.int64)}, TOKENS_INT32, "engine e.engine")
    assert str(info.value) == ("engine e.engine: input 'tokens' is int64 but the engine takes "
                               "int32\n  fix: " + info.value.fix)
    assert "array.astype(np.int32)" in info.value.fix


def test_check_feed_refuses_missing_and_unexpected_inputs() -> None:
    with pytest.raises(TrtflowError, match=r"missing \['tokens'\], unexpected \['ids'\]"):
        check_feed({"ids": np.zeros((2, 16), np.int32)}, TOKENS_INT32, "e")


@pytest.mark.parametrize("shape", [(2, 15), (2, 16, 1), (16,)])
def test_check_feed_refuses_a_wrong_shape(shape: Tuple[int, ...]) -> None:
    with pytest.raises(TrtflowError, match=r"has shape .* the engine takes \[-1, 16\] \(-1 = any\)"):
        check_feed({"tokens": np.zeros(shape, np.int32)}, TOKENS_INT32, "e")


def test_check_feed_refuses_a_batch_outside_the_profile() -> None:
    check_feed({"tokens": np.zeros((4, 16), np.int32)}, TOKENS_INT32, "e", (1, 4))
    with pytest.raises(TrtflowError, match=r"batch 5 of input 'tokens' is outside the engine's "
                                           r"profile \[1, 4\]"):
        check_feed({"tokens": np.zeros((5, 16), np.int32)}, TOKENS_INT32, "e", (1, 4))


def test_adapt_feed_casts_int64_to_int32_and_keeps_values() -> None:
    tokens = np.array([[0, 5, 2**31 - 1], [-2**31, 7, 99]], dtype=np.int64)
    specs = [TensorSpec("tokens", "int32", [-1, 3]), TensorSpec("x", "float32", [-1])]
    floats = np.ones(2, np.float32)
    adapted = adapt_feed({"tokens": tokens, "x": floats}, specs, "e")
    assert adapted["tokens"].dtype == np.int32
    np.testing.assert_array_equal(adapted["tokens"], tokens)
    assert adapted["x"] is floats
    check_feed(adapted, specs, "e")  # what adapt_feed gives passes the check


def test_adapt_feed_refuses_values_outside_int32() -> None:
    tokens = np.array([[1, 2**31]], dtype=np.int64)
    with pytest.raises(TrtflowError) as info:
        adapt_feed({"tokens": tokens}, [TensorSpec("tokens", "int32", [-1, 2])], "engine e")
    assert "engine e: input 'tokens' has values outside int32" in str(info.value)
    assert "int64_inputs_to_int32: never" in info.value.fix


def test_adapt_feed_leaves_float_to_int_mismatches_for_check_feed() -> None:
    specs = [TensorSpec("tokens", "int32", [-1, 2])]
    adapted = adapt_feed({"tokens": np.ones((1, 2), np.float32)}, specs, "e")
    assert adapted["tokens"].dtype == np.float32
    with pytest.raises(TrtflowError, match="is float32 but the engine takes int32"):
        check_feed(adapted, specs, "e")


# --- base: timing and the interface ------------------------------------------------------------

def test_host_timing_runs_warmup_then_the_iterations() -> None:
    calls = []
    times = host_timing(lambda: calls.append(1), warmup=2, iterations=5, max_seconds=60)
    assert len(times) == 5 and len(calls) == 7
    assert all(t >= 0 for t in times)


def test_host_timing_stops_at_max_seconds_but_times_at_least_three() -> None:
    import time

    times = host_timing(lambda: time.sleep(0.01), warmup=0, iterations=1000, max_seconds=0.0)
    assert len(times) == 3
    assert all(t >= 9.0 for t in times)  # milliseconds


def test_runner_base_class_is_an_interface() -> None:
    runner = Runner()
    with pytest.raises(NotImplementedError):
        runner.load()
    with pytest.raises(NotImplementedError):
        runner.infer({})


def test_get_backend_imports_the_named_backend() -> None:
    assert get_backend("onnxruntime").EngineRunner is OnnxRuntimeRunner
    with pytest.raises(ValueError, match="unknown backend 'openvino'"):
        get_backend("openvino")


# --- ONNX Runtime engine -----------------------------------------------------------------------

Engine = Tuple[Path, Path, Dict[str, Any]]  # engine, sidecar path, sidecar


@pytest.fixture(scope="module")
def resnet_model(tmp_path_factory) -> Tuple[Dict[str, Any], Path, Path]:
    spec = resnet_spec(size=32)
    directory = tmp_path_factory.mktemp("runner_resnet")
    weights, onnx_path = exported(directory, "resnet", spec)
    return spec, weights, onnx_path


@pytest.fixture(scope="module")
def resnet_engine(resnet_model) -> Engine:
    _, _, onnx_path = resnet_model
    engine = onnx_path.with_name("fp32-small.onnx")
    sidecar_path = onnx_path.with_name("fp32-small.json")
    sidecar = build_engine(onnx_path, engine, sidecar_path, model="resnet", precision="fp32",
                           batch_profile=PROFILE, profile_name="small",
                           options={"intra_op_threads": 1, "graph_optimization_level": "all"})
    return engine, sidecar_path, sidecar


@pytest.fixture(scope="module")
def token_int32_engine(tmp_path_factory) -> Tuple[Dict[str, Any], Path, Path, Path]:
    """The token model patched for TensorRT (int32 input), run by ONNX Runtime."""
    spec = token_spec()
    directory = tmp_path_factory.mktemp("runner_tokens")
    weights, onnx_path = exported(directory, "tokens", spec)
    patched = directory / "patched.onnx"
    patch_onnx("tokens", onnx_path, patched, directory / "patch.json", "tensorrt",
               {"passes": ["int64_inputs_to_int32"], "int64_inputs_to_int32": "auto"})
    engine, sidecar = directory / "tokens.engine.onnx", directory / "tokens.json"
    build_engine(patched, engine, sidecar, model="tokens", precision="fp32", batch_profile=PROFILE,
                 profile_name="small",
                 options={"intra_op_threads": 0, "graph_optimization_level": "all"})
    return spec, weights, engine, sidecar


def test_build_engine_writes_the_optimised_model_and_sidecar(resnet_engine: Engine) -> None:
    engine, sidecar_path, sidecar = resnet_engine
    assert read_json(sidecar_path) == sidecar
    onnx.checker.check_model(onnx.load(str(engine)))
    assert sidecar["backend"] == "onnxruntime" and sidecar["version"] == version()
    assert sidecar["device"] == "cpu" and sidecar["device_name"]
    assert sidecar["profile"] == PROFILE and sidecar["batch_profile"] == "small"
    assert sidecar["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 3, 32, 32]}]
    assert sidecar["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [-1, 1000]}]
    assert sidecar["build_seconds"] >= 0


def test_build_engine_reports_a_graph_ort_cannot_load(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(TrtflowError, match="ONNX Runtime cannot load the fp16 graph"):
        build_engine(broken, tmp_path / "e.onnx", tmp_path / "e.json", model="m",
                     precision="fp16", batch_profile=PROFILE, profile_name="small",
                 options={"intra_op_threads": 0, "graph_optimization_level": "all"})
    assert not (tmp_path / "e.onnx").exists() and not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("batch", [1, 4])
def test_onnxruntime_runner_matches_torch(resnet_model, resnet_engine: Engine, batch: int) -> None:
    spec, weights, _ = resnet_model
    engine, sidecar_path, _ = resnet_engine
    feed = image_batch(batch, seed=batch)
    with OnnxRuntimeRunner(engine, sidecar_path, threads=1) as runner:
        out = runner.infer(feed)
    (ref,) = torch_outputs(reference_module("resnet", spec, weights), feed)
    assert list(out) == ["logits"]
    np.testing.assert_allclose(out["logits"], ref, atol=1e-4, rtol=1e-4)


def test_onnxruntime_runner_refuses_a_batch_outside_the_profile(resnet_engine: Engine) -> None:
    engine, sidecar_path, _ = resnet_engine
    with OnnxRuntimeRunner(engine, sidecar_path) as runner:
        with pytest.raises(TrtflowError, match=r"batch 5 .* outside the engine's profile \[1, 4\]"):
            runner.infer(image_batch(5))


def test_onnxruntime_runner_without_sidecar_takes_any_batch(resnet_engine: Engine) -> None:
    engine, _, _ = resnet_engine
    with OnnxRuntimeRunner(engine) as runner:
        assert runner.infer(image_batch(5))["logits"].shape == (5, 1000)
        assert runner.inputs == [TensorSpec("input", "float32", [-1, 3, 32, 32])]


def test_onnxruntime_runner_refuses_an_engine_of_another_ort_version(
        resnet_engine: Engine, tmp_path: Path) -> None:
    engine, _, sidecar = resnet_engine
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(sidecar, version="0.0.1")))
    with pytest.raises(TrtflowError) as info:
        OnnxRuntimeRunner(engine, other).load()
    assert f"made by ONNX Runtime 0.0.1, this is {version()}" in str(info.value)
    assert "rerun snakemake" in info.value.fix


def test_onnxruntime_runner_time_returns_the_iterations(resnet_engine: Engine) -> None:
    engine, sidecar_path, _ = resnet_engine
    with OnnxRuntimeRunner(engine, sidecar_path, threads=1) as runner:
        times = runner.time(image_batch(2), warmup=1, iterations=4, max_seconds=30)
    assert len(times) == 4 and all(t > 0 for t in times)


def test_int32_engine_refuses_int64_then_runs_the_adapted_feed(token_int32_engine) -> None:
    spec, weights, engine, sidecar = token_int32_engine
    assert read_json(sidecar)["inputs"][0]["dtype"] == "int32"
    feed = token_batch(3)
    with OnnxRuntimeRunner(engine, sidecar) as runner:
        with pytest.raises(TrtflowError, match="is int64 but the engine takes int32"):
            runner.infer(feed)
        out = runner.infer(adapt_feed(feed, runner.inputs, "engine"))
    (ref,) = torch_outputs(reference_module("tokens", spec, weights), feed)
    np.testing.assert_allclose(out["logits"], ref, atol=1e-5, rtol=1e-5)


# --- PyTorch runner ----------------------------------------------------------------------------

def test_torch_runner_fp32_gives_the_module_outputs(resnet_model) -> None:
    spec, weights, _ = resnet_model
    module = reference_module("resnet", spec, weights)
    feed = image_batch(2)
    runner = TorchRunner(module, ["logits"]).load()
    assert runner.name == "torch-eager-fp32"
    out = runner.infer(feed)
    (ref,) = torch_outputs(module, feed)
    assert out["logits"].dtype == np.float32
    np.testing.assert_array_equal(out["logits"], ref)


def test_torch_runner_fp16_halves_the_model_and_returns_float32(token_int32_engine) -> None:
    spec, weights, _, _ = token_int32_engine
    feed = token_batch(4)
    (ref,) = torch_outputs(reference_module("tokens", spec, weights), feed)
    runner = TorchRunner(reference_module("tokens", spec, weights), ["logits"],
                         precision="fp16").load()
    assert runner.name == "torch-eager-fp16"
    assert next(runner.module.parameters()).dtype == torch.float16
    out = runner.infer(feed)["logits"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-2, rtol=1e-2)
    assert not np.array_equal(out, ref)


def test_torch_runner_time_on_cpu(token_int32_engine) -> None:
    spec, weights, _, _ = token_int32_engine
    runner = TorchRunner(reference_module("tokens", spec, weights), ["logits"]).load()
    times = runner.time(token_batch(2), warmup=1, iterations=5, max_seconds=30)
    assert len(times) == 5 and all(t > 0 for t in times)


def test_torch_runner_name_says_compiled() -> None:
    assert TorchRunner(torch.nn.Identity(), ["y"], precision="fp16", compile=True).name == \
        "torch-compile-fp16"


class RecordingRunner(Runner):
    """Echoes its input as output and records each batch it was given, checked like an engine."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high, self.batches = low, high, []
        self.inputs = [TensorSpec("x", "float32", [-1, 3])]

    def infer(self, feed):
        check_feed(feed, self.inputs, "recording", (self.low, self.high))
        self.batches.append(feed["x"].shape[0])
        # a scalar and a shape: outputs without the batch axis (debug_precision marks them)
        return {"y": feed["x"] * 2, "scale": np.float32(2.0), "shape": np.array([4, 3], np.int64)}


@pytest.mark.parametrize("low,high,count,batches", [
    (16, 16, 8, [16]),          # a profile larger than the validation set: pad
    (1, 4, 10, [4, 4, 2]),      # chunks of at most max
    (3, 4, 10, [4, 4, 3]),      # the short last chunk padded up to min
    (1, 1, 3, [1, 1, 1]),       # static batch 1
])
def test_infer_in_chunks_fits_any_profile_and_keeps_only_real_samples(low, high, count, batches):
    from trtflow.runners.base import infer_in_chunks

    x = np.arange(count * 3, dtype=np.float32).reshape(count, 3)
    runner = RecordingRunner(low, high)
    out = infer_in_chunks(runner, {"x": x}, high, low)
    assert runner.batches == batches
    np.testing.assert_array_equal(out["y"], x * 2)
    assert out["scale"] == 2.0 and out["shape"].tolist() == [4, 3]


def test_build_engine_skips_the_disabled_optimizers(resnet_model, tmp_path: Path) -> None:
    """onnxruntime.disabled_optimizers (per model too): the way around an optimiser that crashes."""
    _, _, onnx_path = resnet_model
    sidecar = build_engine(onnx_path, tmp_path / "e.ort.onnx", tmp_path / "e.json", model="resnet",
                           precision="fp32", batch_profile=PROFILE, profile_name="small",
                           options={"intra_op_threads": 1, "graph_optimization_level": "all",
                                    "disabled_optimizers": ["NchwcTransformer"]})
    assert sidecar["disabled_optimizers"] == ["NchwcTransformer", "WeightBiasQuantization"]
    ops = {node.op_type for node in onnx.load(str(tmp_path / "e.ort.onnx")).graph.node}
    assert "ReorderOutput" not in ops  # what the NCHWc transformer inserts
    plain = build_engine(onnx_path, tmp_path / "p.ort.onnx", tmp_path / "p.json", model="resnet",
                         precision="fp32", batch_profile=PROFILE, profile_name="small",
                         options={"intra_op_threads": 1, "graph_optimization_level": "all"})
    assert plain["disabled_optimizers"] == ["WeightBiasQuantization"]
    assert "ReorderOutput" in {n.op_type for n in onnx.load(str(tmp_path / "p.ort.onnx")).graph.node}
