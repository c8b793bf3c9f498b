"""The parts of the TensorRT backend that need no TensorRT: inspector JSON to layer precisions,
the precision check, the cache lock, and trtflow.cuda importing on a machine without a GPU.

The layer dicts below follow TensorRT's engine inspector JSON (LayerInformationFormat.JSON with
ProfilingVerbosity.DETAILED)."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import REPO
from trtflow.errors import TrtflowError
from trtflow.runners.tensorrt_cache import locked
from trtflow.runners.tensorrt_inspect import (EXPECTED_LAYER_PRECISION, check_layer_precisions,
                                              classify_layer, layer_precisions, layer_table)


def tensor(fmt: str) -> Dict[str, Any]:
    return {"Name": "t", "Location": "Device", "Dimensions": [2, 64, 8, 8], "Format/Datatype": fmt}


CONV_FP32 = {"Name": "/conv1/Conv + /relu/Relu", "LayerType": "CaskConvolution",
             "Inputs": [tensor("Row major linear FP32")],
             "Outputs": [tensor("Row major linear FP32")],
             "ParameterType": "Convolution", "Weights": {"Type": "Float", "Count": 9408}}
CONV_FP16 = {"Name": "/layer1/conv", "LayerType": "CaskConvolution",
             "Inputs": [tensor("Channel major FP16 format where channel % 8 == 0")],
             "Outputs": [tensor("Channel major FP16 format where channel % 8 == 0")],
             "ParameterType": "Convolution", "Weights": {"Type": "Half", "Count": 36864}}
CONV_INT8 = {"Name": "/layer2/conv", "LayerType": "CaskConvolution",
             "Inputs": [tensor("Channel major INT8 format where channel % 32 == 0")],
             "Outputs": [tensor("Row major linear FP32")],
             "ParameterType": "Convolution", "Weights": {"Type": "Int8", "Count": 73728}}
REFORMAT_TO_FP16 = {"Name": "Reformatting CopyNode for Input Tensor 0", "LayerType": "Reformat",
                    "Inputs": [tensor("Row major linear FP32")],
                    "Outputs": [tensor("Two wide channel vectorized row major FP16 format")]}
SHAPE_INT32 = {"Name": "shape", "LayerType": "Shape", "Inputs": [tensor("Row major linear Int32")],
               "Outputs": [tensor("Row major linear Int32")]}
GATHER_INT64 = {"Name": "gather", "LayerType": "Gather", "Inputs": [tensor("Row major linear Int64")],
                "Outputs": [tensor("Row major linear Int64")]}
FP8 = {"Name": "fp8mm", "LayerType": "Gemm", "Inputs": [tensor("Row major linear FP8")],
       "Outputs": [tensor("Row major linear FP16")]}
BF16 = {"Name": "bf", "LayerType": "Gemm", "Inputs": [tensor("Row major linear BFloat16")],
        "Outputs": [tensor("Row major linear BFloat16")]}
UINT8 = {"Name": "u8", "LayerType": "Cast", "Inputs": [tensor("Row major linear UInt8")],
         "Outputs": [tensor("Row major linear UInt8")]}
MYELIN = {"Name": "{ForeignNode[/fc/Gemm...]}", "LayerType": "Myelin", "Inputs": [],
          "Outputs": [], "TacticName": "", "StreamId": 0}
NOOP = {"Name": "reshape", "LayerType": "NoOp", "Inputs": [tensor("Row major linear FP32")],
        "Outputs": [tensor("Row major linear FP32")]}
NOOP_PARAM = {"Name": "shuffle", "LayerType": "Shuffle", "ParameterType": "NoOp",
              "Inputs": [tensor("Row major linear FP16")], "Outputs": []}


def test_importing_the_tensorrt_backend_does_not_import_tensorrt() -> None:
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys; import trtflow.runners.tensorrt, trtflow.cuda; "
         "print('tensorrt' in sys.modules, 'torch' in sys.modules)"],
        cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("layer, expected", [
    (CONV_FP32, "fp32"), (CONV_FP16, "fp16"), (CONV_INT8, "int8"), (REFORMAT_TO_FP16, "fp16"),
    (SHAPE_INT32, "int32"), (GATHER_INT64, "int64"), (FP8, "fp8"), (BF16, "bf16"),
    (UINT8, "uint8"), (MYELIN, "unknown"),
])
def test_classify_layer_takes_the_lowest_precision_it_touches(layer: Dict[str, Any],
                                                              expected: str) -> None:
    assert classify_layer(layer) == expected


NA = "N/A due to dynamic shapes"


@pytest.mark.parametrize("tactic, expected", [
    ("sm80_xmma_fprop_implicit_gemm_f32f32_f32f32_f32_nhwckrsc_nhwc_tilesize128x128x8", "fp32"),
    ("sm80_xmma_fprop_implicit_gemm_indexed_f16f16_f16f16_f16_nhwckrsc_nhwc_tilesize64x64x64",
     "fp16"),
    ("sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32", "int8"),
    ("turing_h1688gemm_256x128_ldg8_relu_nn", "fp16"),
    ("sm75_xmma_gemm_imma_int8_tn", "int8"),
    ("volta_sgemm_128x64_nn", "fp32"),
    ("0x7e29bdfccd92c42c", "unknown"),
])
def test_classify_layer_falls_back_to_the_tactic_name_when_datatypes_are_na(
        tactic: str, expected: str) -> None:
    layer = {"Name": "/conv/Conv", "LayerType": "CaskConvolution", "Inputs": [tensor(NA)],
             "Outputs": [tensor(NA)], "TacticName": tactic}
    assert classify_layer(layer) == expected


def test_datatypes_win_over_the_tactic_name() -> None:
    layer = dict(CONV_FP16, TacticName="sm80_xmma_fprop_implicit_gemm_f32f32_f32f32_f32")
    assert classify_layer(layer) == "fp16"


def test_classify_layer_reads_the_weights_type() -> None:
    layer = {"Name": "fc", "LayerType": "Gemm", "Inputs": [], "Outputs": [],
             "Weights": {"Type": "Half", "Count": 10}}
    assert classify_layer(layer) == "fp16"
    assert classify_layer(dict(layer, Weights={"Type": "Int8"})) == "int8"


def test_classify_layer_matches_whole_words_only() -> None:
    # "UInt8" is not int8, "BFloat16" is neither float (fp32) nor fp16
    assert classify_layer(UINT8) != "int8"
    assert classify_layer(BF16) == "bf16"


def test_layer_table_skips_noops_and_keeps_unknown_layers_for_inspection() -> None:
    info = {"Layers": [CONV_FP16, NOOP, NOOP_PARAM, MYELIN, CONV_INT8],
            "Bindings": ["input", "logits"]}
    rows = layer_table(info)
    assert [r["name"] for r in rows] == [CONV_FP16["Name"], MYELIN["Name"], CONV_INT8["Name"]]
    assert rows[0] == {"name": "/layer1/conv", "type": "CaskConvolution", "precision": "fp16"}
    assert rows[1]["precision"] == "unknown" and '"LayerType": "Myelin"' in rows[1]["inspector"]
    assert "inspector" not in rows[2]


def test_layer_table_of_a_names_only_engine() -> None:
    rows = layer_table({"Layers": ["conv1", "relu1"]})
    assert rows == [{"name": "conv1", "type": "", "precision": "unknown"},
                    {"name": "relu1", "type": "", "precision": "unknown"}]
    assert layer_table({}) == []


def test_layer_table_truncates_long_inspector_text() -> None:
    huge = dict(MYELIN, Metadata="x" * 5000)
    (row,) = layer_table({"Layers": [huge]})
    assert len(row["inspector"]) == 800


def test_layer_precisions_counts_rows() -> None:
    rows = layer_table({"Layers": [CONV_FP16, CONV_FP16, CONV_FP32, MYELIN, CONV_INT8]})
    assert layer_precisions(rows) == {"fp16": 2, "fp32": 1, "unknown": 1, "int8": 1}
    assert layer_precisions([]) == {}


@pytest.mark.parametrize("precision, counts", [
    ("fp32", {"fp32": 10}), ("fp32", {}), ("fp16", {"fp16": 1, "fp32": 3}),
    ("int8", {"int8": 5, "fp32": 2, "unknown": 1}),
])
def test_check_layer_precisions_ok(precision: str, counts: Dict[str, int]) -> None:
    assert check_layer_precisions(precision, counts, "net", Path("x.onnx")) == "ok"


def test_check_layer_precisions_unverifiable_with_opaque_layers() -> None:
    result = check_layer_precisions("fp16", {"fp32": 2, "unknown": 3}, "net", Path("x.onnx"))
    assert result == "unverifiable: 3 layer(s) report no datatype"


@pytest.mark.parametrize("precision", sorted(EXPECTED_LAYER_PRECISION))
def test_check_layer_precisions_fails_an_engine_without_that_precision(precision: str) -> None:
    with pytest.raises(TrtflowError) as info:
        check_layer_precisions(precision, {"fp32": 12, "int32": 1}, "net", Path("net/fp.onnx"))
    text = str(info.value)
    assert text.startswith(f"model 'net': file 'net/fp.onnx': the {precision} engine has no "
                           f"{precision} layer (layer precisions: {{'fp32': 12, 'int32': 1}})")
    assert info.value.model == "net"


def test_check_layer_precisions_on_a_table_from_inspector_json() -> None:
    counts = layer_precisions(layer_table({"Layers": [REFORMAT_TO_FP16, CONV_FP16, NOOP]}))
    assert check_layer_precisions("fp16", counts, "net", Path("x.onnx")) == "ok"
    with pytest.raises(TrtflowError):
        check_layer_precisions("int8", counts, "net", Path("x.onnx"))


def test_locked_creates_a_persistent_lock_file_and_is_reusable(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "timing.cache"
    with locked(cache):
        assert (tmp_path / "cache" / "timing.cache.lock").exists()
    with locked(cache):  # released: the next holder gets it
        pass
    assert (tmp_path / "cache" / "timing.cache.lock").exists()  # never deleted
    assert not cache.exists()


def test_cuda_module_loads_nothing_at_import_and_fails_clearly_without_a_gpu() -> None:
    cuda = importlib.import_module("trtflow.cuda")
    cuda.check(0, "nothing")  # success status: no library needed
    try:
        devices = cuda.list_devices()
    except cuda.CudaError as exc:  # no GPU, or no CUDA runtime, here
        assert "failed: CUDA error" in str(exc) or "cannot load the CUDA runtime" in str(exc)
    else:  # a GPU machine: each device is described
        assert all(set(d) == {"index", "name", "compute_capability"} for d in devices)


def test_a_build_that_cannot_load_cublas_for_a_plugin_says_what_to_do() -> None:
    """The error lines TensorRT 8.6.0 gave on the H200 for a network with EfficientNMS (stub
    cuBLAS/cuDNN there) name the library and the pass that added the plugin."""
    from trtflow.runners.tensorrt import build_failure_fix

    seen = ["3: [libLoader.cpp::untypedSymbolAddress::364] Error Code 3: Internal Error "
            "(SymbolAddress for cublasGetProperty could not be loaded, check function name "
            "against library symbol)"]
    assert "patch.efficient_nms: never" in build_failure_fix(seen)
    assert "cuBLAS/cuDNN" in build_failure_fix(["SymbolAddress for cudnnActivationForward could "
                                                "not be loaded"])
    assert "workspace_mib" in build_failure_fix(["10: Could not find any implementation"])
