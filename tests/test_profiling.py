"""trtflow.profiling: per-layer profiles grouped into what a user can act on, the summary's
profile columns and the comparison that says why a lower precision is slower; ONNX Runtime's
profiler on a real engine; the benchmark's timing-mode fallback."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest

from trtflow.benchmark import layer_profile, measure
from trtflow.config import section_defaults
from trtflow.profiling import (CATEGORIES, CONVOLUTION, REFORMAT, categorize, explain_slower,
                               profile_columns, summarize_profile)
from trtflow.runners.base import Runner, TimingModeUnavailable
from trtflow.runners.onnxruntime import OnnxRuntimeRunner, node_times
from unit_helpers import image_batch, ort_engine, resnet_spec

BENCHMARK = section_defaults("benchmark")


@pytest.mark.parametrize("layer_type, name, category", [
    # TensorRT 8.6 engine inspector types and names
    ("CaskConvolution", "/layer1/conv1/Conv + /layer1/relu/Relu", CONVOLUTION),
    ("CaskGemmMatrixMultiply", "/head/MatMul", CONVOLUTION),
    ("Reformat", "Reformatting CopyNode for Input Tensor 0 to /layer1/conv1/Conv", REFORMAT),
    ("", "Reformatting CopyNode for Output Tensor 0 to /conv", REFORMAT),  # profiler only
    ("Myelin", "{ForeignNode[/transformer/MatMul.../Softmax]}", "Myelin"),
    ("", "{ForeignNode[/backbone/conv1/Conv]}", "Myelin"),  # a Myelin region naming convs
    ("PointWiseV2", "PWN(/layer1/conv/Relu)", "other"),  # typed: its name is not re-read
    ("TopK", "/rpn/TopK", "TopK"),
    ("NMS", "/roi_heads/NonMaxSuppression", "NMS"),
    ("PluginV2", "/roi_heads/EfficientNMS_TRT", "NMS"),  # plugins by their node's name
    ("PluginV2", "/roi_heads/box_roi_pool/PyramidROIAlign_TRT", "RoIAlign/GridSample"),
    ("GridSample", "/roi_heads/GridSample", "RoIAlign/GridSample"),
    ("Shuffle", "/Reshape", REFORMAT),
    # ONNX Runtime op types
    ("QLinearConv", "conv_quant", CONVOLUTION), ("FusedConv", "x", CONVOLUTION),
    ("ReorderInput", "r", REFORMAT), ("DequantizeLinear", "d", REFORMAT),
    ("NonMaxSuppression", "n", "NMS"), ("RoiAlign", "r", "RoIAlign/GridSample"),
    ("Relu", "r", "other"),
])
def test_layers_are_grouped_by_type_then_name(layer_type: str, name: str, category: str) -> None:
    assert categorize(layer_type, name) == category


def _runs(**layers) -> Dict[str, Dict[str, Any]]:
    return {name: {"times_ms": times, "type": kind, "precision": precision}
            for name, (kind, precision, times) in layers.items()}


FP16 = _runs(conv=("CaskConvolution", "fp16", [1.0, 1.2, 1.1]),
             nms=("NMS", "fp32", [0.5, 0.5, 0.5]))
INT8 = _runs(conv=("CaskConvolution", "int8", [0.6, 0.6, 0.6]),
             reformat_a=("Reformat", "int8", [0.4, 0.4, 0.4]),
             reformat_b=("Reformat", "fp16", [0.3, 0.3, 0.3]),
             nms=("NMS", "fp32", [0.5, 0.5, 0.5]))


def test_profile_takes_each_layers_median_and_sums_categories() -> None:
    profile = summarize_profile(FP16, batch=4, runs=3)
    assert profile["batch"] == 4 and profile["runs"] == 3 and profile["layers_timed"] == 2
    assert profile["total_ms"] == pytest.approx(1.6)  # medians 1.1 + 0.5
    assert profile["categories"][CONVOLUTION] == {"ms": pytest.approx(1.1),
                                                  "share": pytest.approx(1.1 / 1.6), "layers": 1}
    assert profile["categories"]["NMS"]["layers"] == 1
    assert set(profile["categories"]) == set(CATEGORIES)
    assert profile["share_outside_conv"] == pytest.approx(0.5 / 1.6)
    assert [layer["name"] for layer in profile["top_layers"]] == ["conv", "nms"]
    assert profile["reformat_layers"] == 0


def test_profile_counts_reformat_layers_and_their_time() -> None:
    profile = summarize_profile(INT8, batch=4, runs=3)
    assert profile["reformat_layers"] == 2
    assert profile["reformat_ms"] == pytest.approx(0.7)
    columns = profile_columns(profile)
    assert columns["profile_reformat_layers"] == 2
    assert columns["profile_top_category"] == "reformat/copy 39%"  # 0.7 of 1.8 ms
    assert columns["profile_top_layer"].startswith("conv (convolution/GEMM, 33%)")


def test_no_profile_gives_empty_columns() -> None:
    assert set(profile_columns(None).values()) == {""}
    assert profile_columns(summarize_profile({}, 1, 0))["profile_top_layer"] == ""


def test_explain_slower_names_the_categories_that_grew_and_the_reformats() -> None:
    why = explain_slower(summarize_profile(INT8, 4, 3), summarize_profile(FP16, 4, 3),
                         "int8", "fp16")
    assert "reformat/copy +0.7 ms" in why
    assert "reformat layers 2 (0.7 ms) vs 0 (0 ms)" in why
    assert "convolution/GEMM" not in why.split("more time in:")[1].split(";")[0]  # it shrank
    assert "int8's top layers: conv 0.6 ms (int8)" in why
    assert explain_slower(None, summarize_profile(FP16, 4, 3), "int8", "fp16") == \
        "no layer profile to compare"


def test_node_times_reads_onnxruntime_trace_events_and_drops_each_first_run() -> None:
    events = [{"cat": "Session", "name": "model_run", "dur": 900},
              {"cat": "Node", "name": "conv_kernel_time", "dur": 500, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "conv_fence_before", "dur": 1},
              {"cat": "Node", "name": "conv_kernel_time", "dur": 200, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "q_kernel_time", "dur": 50, "args": {"op_name": "QLinearConv"}},
              {"cat": "Node", "name": "q_kernel_time", "dur": 40, "args": {"op_name": "QLinearConv"}}]
    times = node_times(events, skip_first_run=True)
    assert times == {"conv": {"times_ms": [0.2], "type": "Conv", "precision": ""},
                     "q": {"times_ms": [0.04], "type": "QLinearConv", "precision": "int8"}}


@pytest.fixture(scope="module")
def resnet_engine(tmp_path_factory) -> Path:
    return ort_engine(tmp_path_factory.mktemp("profile"), "resnet", resnet_spec(),
                      {"min": 1, "opt": 2, "max": 4})


def test_onnxruntime_profile_of_a_real_engine_is_mostly_convolution(resnet_engine: Path) -> None:
    with OnnxRuntimeRunner(resnet_engine, resnet_engine.with_suffix(".json"), threads=1) as runner:
        layers = runner.profile_layers(image_batch(2), runs=3)
        profile = layer_profile(runner, image_batch(2), batch=2, runs=3)
        assert layer_profile(runner, image_batch(2), batch=2, runs=0) is None
    assert {len(layer["times_ms"]) for layer in layers.values()} == {3}  # first run dropped
    assert profile["runs"] == 3 and profile["batch"] == 2
    assert profile["categories"][CONVOLUTION]["layers"] >= 10  # ResNet-18's convolutions
    assert profile["categories"][CONVOLUTION]["share"] > 0.5
    assert profile["total_ms"] > 0


class GraphlessRunner(Runner):
    """A runner whose first timing mode cannot run on this engine (a CUDA graph that cannot be
    captured): the benchmark must time the next mode and say why."""

    name = "graphless"

    def time_modes(self) -> List[str]:
        return ["cuda_graph", "eager"]

    def time(self, feed, warmup, iterations, max_seconds, mode=None) -> List[float]:
        if mode == "cuda_graph":
            raise TimingModeUnavailable("no CUDA graph could be captured (plugin syncs)")
        return [2.0, 1.0, 3.0]


def test_benchmark_falls_back_to_the_next_timing_mode_and_records_why() -> None:
    (row,) = measure(GraphlessRunner(), image_batch(2), [2],
                     {**BENCHMARK, "warmup": 0, "iterations": 3, "max_seconds": 1})
    assert row["timing_mode"] == "eager" and row["latency_p50_ms"] == 2.0
    assert row["eager_latency_p50_ms"] == 2.0 and "cuda_graph_latency_p50_ms" not in row
    assert "plugin syncs" in row["timing_unavailable"]["cuda_graph"]


def test_a_runner_with_one_timing_mode_adds_no_mode_columns(resnet_engine: Path) -> None:
    with OnnxRuntimeRunner(resnet_engine, threads=1) as runner:
        (row,) = measure(runner, image_batch(2), [2], {**BENCHMARK, "warmup": 0, "iterations": 3,
                                                       "max_seconds": 1})
    assert "timing_mode" not in row and "eager_latency_p50_ms" not in row
