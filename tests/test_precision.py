"""trtflow.precision: fp32 copy, fp16 graph with fp32 I/O, int8 Q/DQ per backend flavour."""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import resnet_entry
from trtflow.data import input_set
from trtflow.errors import TrtflowError
from trtflow.io import read_json
from trtflow.patch import patch_onnx
from trtflow.calibration import ArrayCalibrationReader, calibration_arrays
from trtflow.precision import initializer_dtypes, make_precision, op_histogram, quantization_settings
from unit_helpers import (calibration_options, exported, image_batch, ort_run, rel_l2, token_spec,
                          validated_spec)

PATCH_OPTIONS = {"passes": ["fold_constants", "cleanup", "toposort", "int64_inputs_to_int32",
                            "infer_shapes"], "int64_inputs_to_int32": "auto"}


def image_spec() -> Dict[str, Any]:
    entry = resnet_entry({"random": True, "seed": 0}, size=32)
    entry["inputs"][0]["data"] = "imagenet_samples"
    return validated_spec("resnet", entry)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("precision")


@pytest.fixture(scope="module")
def resnet_patched(workdir: Path) -> Dict[str, Path]:
    """The resnet graph after the patch stage, once per backend."""
    _, source = exported(workdir, "resnet", image_spec())
    patched = {}
    for backend in ("tensorrt", "onnxruntime"):
        patched[backend] = workdir / f"patched-{backend}.onnx"
        patch_onnx("resnet", source, patched[backend], workdir / f"patch-{backend}.json", backend,
                   PATCH_OPTIONS)
    return patched


@pytest.fixture(scope="module")
def calibration() -> Dict[str, np.ndarray]:
    return calibration_arrays("resnet", image_spec()["inputs"], 8, seed=0)


@pytest.fixture(scope="module")
def built(workdir: Path, resnet_patched: Dict[str, Path],
          calibration: Dict[str, np.ndarray]) -> Dict[Tuple[str, str], Tuple[Path, Dict[str, Any]]]:
    """(backend, precision) -> (precision ONNX, report) for fp32, fp16 and int8."""
    results = {}
    for backend, source in resnet_patched.items():
        for precision in ("fp32", "fp16", "int8"):
            output = workdir / f"{backend}-{precision}.onnx"
            report = make_precision("resnet", precision, source, output,
                                    workdir / f"{backend}-{precision}.json", backend,
                                    calibration if precision == "int8" else None,
                                    calibration_options(workdir / "ranges"))
            results[(backend, precision)] = (output, report)
    return results


def io_elem_types(proto) -> List[int]:
    return [v.type.tensor_type.elem_type for v in list(proto.graph.input) + list(proto.graph.output)]


def zero_points(proto, op_type: str) -> List[np.ndarray]:
    initializers = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.op_type == op_type]
    assert nodes and all(len(n.input) == 3 for n in nodes), f"{op_type} without zero points"
    return [initializers[n.input[2]] for n in nodes]


def consumers(proto) -> Dict[str, int]:
    counts: Dict[str, int] = collections.Counter()
    for node in proto.graph.node:
        counts.update(node.input)
    return counts


# --- fp32 / fp16 -----------------------------------------------------------------------------

def test_fp32_is_a_byte_copy_of_the_patched_graph(built, resnet_patched) -> None:
    output, report = built[("onnxruntime", "fp32")]
    assert output.read_bytes() == resnet_patched["onnxruntime"].read_bytes()
    assert report["initializer_dtypes"] == {"float32": report["initializer_dtypes"]["float32"]}
    assert report["quantize_linear"] == 0 and "calibration" not in report


def test_fp16_has_float16_weights_and_float32_io(built) -> None:
    output, report = built[("tensorrt", "fp16")]
    proto = onnx.load(str(output))
    assert set(initializer_dtypes(proto)) == {"float16"}
    assert report["initializer_dtypes"] == initializer_dtypes(proto)
    assert io_elem_types(proto) == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    assert report["op_types"]["Cast"] >= 2  # casts at both edges


def test_fp16_outputs_stay_close_to_fp32(built) -> None:
    feed = image_batch(4)
    (ref,) = ort_run(built[("tensorrt", "fp32")][0], feed)
    (out,) = ort_run(built[("tensorrt", "fp16")][0], feed)
    assert out.dtype == np.float32
    assert rel_l2(out, ref) < 1e-2


# --- int8 --------------------------------------------------------------------------------------

def test_int8_for_tensorrt_is_symmetric_int8_with_dedicated_pairs(built) -> None:
    output, report = built[("tensorrt", "int8")]
    proto = onnx.load(str(output))
    for op_type in ("QuantizeLinear", "DequantizeLinear"):
        points = zero_points(proto, op_type)
        assert {p.dtype.name for p in points} == {"int8"}, op_type
        assert all(not p.any() for p in points), f"{op_type} zero point not 0"
    # no int32 bias quantisation, which TensorRT does not take
    assert set(initializer_dtypes(proto)) == {"float32", "int8"}
    # dedicated Q/DQ pair per consumer: no dequantised tensor feeds two nodes
    counts = consumers(proto)
    assert all(counts[n.output[0]] <= 1 for n in proto.graph.node if n.op_type == "DequantizeLinear")
    assert io_elem_types(proto) == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    assert report["quantize_linear"] == op_histogram(proto)["QuantizeLinear"] > 0
    calibrated = report["calibration"]
    assert (calibrated["method"], calibrated["percentile"], calibrated["samples"]) == (
        "percentile", 99.99, 8)
    assert Path(calibrated["ranges"]).is_file()


def dequantized_consumers(proto) -> Dict[str, List[str]]:
    """op type -> the inputs of that op fed by a DequantizeLinear (by node)."""
    produced_by_dq = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    fed: Dict[str, List[str]] = collections.defaultdict(list)
    for node in proto.graph.node:
        fed[node.op_type] += [node.name for name in node.input if name in produced_by_dq]
    return fed


def test_int8_for_tensorrt_quantises_what_tensorrt_runs_in_int8(built) -> None:
    """Q/DQ in front of Conv, Gemm, pooling and one input of each residual Add; none between a
    Conv and its Relu (TensorRT fuses them) and none on the Add input a Conv produces."""
    from trtflow.precision import QDQ_SHUFFLES, TENSORRT_INT8_OPS

    proto = onnx.load(str(built[("tensorrt", "int8")][0]))
    fed = dequantized_consumers(proto)
    assert {op for op, names in fed.items() if names} <= set(TENSORRT_INT8_OPS) | set(QDQ_SHUFFLES)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(fed["Conv"]) == 2 * len(convs)  # activation and weight of every Conv
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert adds and sorted(fed["Add"]) == sorted(n.name for n in adds)  # one input each


def test_int8_for_tensorrt_leaves_silu_float(tmp_path: Path) -> None:
    """SiLU (x * sigmoid(x)) stays float: with Q/DQ around Sigmoid and Mul, TensorRT 8.6 finds no
    implementation for the fused pointwise node."""
    import torch

    class SiluBlock(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            y = torch.nn.functional.silu(self.first(x))
            return y + torch.nn.functional.silu(self.second(y))

    source = tmp_path / "silu.onnx"
    torch.onnx.export(SiluBlock().eval(), (torch.rand(1, 3, 16, 16),), str(source),
                      input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    make_precision("silu", "int8", source, tmp_path / "int8.onnx", tmp_path / "int8.json",
                   "tensorrt", {"x": np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)},
                   calibration_options(tmp_path / "ranges"))
    fed = dequantized_consumers(onnx.load(str(tmp_path / "int8.onnx")))
    assert not fed["Sigmoid"] and not fed["Mul"]
    # neither Add input comes from a Conv (both from SiLU's Mul): no epilogue to fuse into,
    # so both stay quantised and the Add runs in int8
    assert len(fed["Conv"]) == 4 and len(fed["Add"]) == 2


def tensorrt_int8(tmp_path: Path, name: str, module, shape: Tuple[int, ...]):
    """`module` exported and quantised in TensorRT's form, loaded."""
    import torch

    source = tmp_path / f"{name}.onnx"
    torch.onnx.export(module.eval(), (torch.rand(1, *shape),), str(source), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)
    make_precision(name, "int8", source, tmp_path / "int8.onnx", tmp_path / "int8.json", "tensorrt",
                   {"x": np.random.default_rng(0).random((4, *shape), dtype=np.float32)},
                   calibration_options(tmp_path / "ranges"))
    return onnx.load(str(tmp_path / "int8.onnx"))


def int8_and_float_readers(proto) -> List[str]:
    """Tensors read both through a Q/DQ pair and in float: TensorRT must write such a tensor twice
    (a reformat), and cannot fuse its producer's epilogue."""
    readers: Dict[str, List[str]] = collections.defaultdict(list)
    for node in proto.graph.node:
        for name in node.input:
            readers[name].append(node.op_type)
    made_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    return [name for name, ops in readers.items()
            if made_by.get(name) not in (None, "QuantizeLinear", "DequantizeLinear")
            and "QuantizeLinear" in ops and any(op != "QuantizeLinear" for op in ops)]


def test_int8_for_tensorrt_quantises_a_squeeze_excitation_gate(tmp_path: Path) -> None:
    """EfficientNet's block: conv -> SiLU -> squeeze-excitation (pool, fc1, SiLU, fc2, sigmoid)
    scaling the SiLU's output -> projection conv. The gate Mul is int8 on both inputs, as ModelOpt
    places it, so the SiLU feeds only int8 readers (TensorRT fuses it into the conv); SiLU's own
    Mul stays float."""
    import torch
    from torchvision.ops import SqueezeExcitation

    class MBConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.expand = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.excite = SqueezeExcitation(16, 4, activation=torch.nn.SiLU)
            self.project = torch.nn.Conv2d(16, 8, 1)

        def forward(self, x):
            return self.project(self.excite(torch.nn.functional.silu(self.expand(x))))

    proto = tensorrt_int8(tmp_path, "mbconv", MBConv(), (3, 16, 16))
    fed = dequantized_consumers(proto)
    assert sorted(n.name for n in proto.graph.node if n.op_type == "Mul") == [
        "/Mul", "/excite/Mul", "/excite/activation/Mul"]
    assert fed["Mul"] == ["/excite/Mul"] * 2  # both inputs of the gate, neither SiLU Mul
    assert not fed["Sigmoid"]
    assert int8_and_float_readers(proto) == []


def test_int8_for_tensorrt_fuses_a_residual_add_into_its_own_branch(tmp_path: Path) -> None:
    """MobileNetV2's x + conv(x), where x is itself a projection conv's output: the Add reads
    conv(x) in float (the branch's epilogue) and quantises x, which the next block also reads in
    int8; kept the other way round, x would be written in int8 and in float."""
    import torch

    class InvertedResidual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.project_in = torch.nn.Conv2d(3, 8, 1)
            self.branch = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU6(),
                                              torch.nn.Conv2d(16, 8, 1))
            self.after = torch.nn.Conv2d(8, 8, 1)

        def forward(self, x):
            x = self.project_in(x)
            return self.after(x + self.branch(x)) + self.after(x)

    proto = tensorrt_int8(tmp_path, "inverted", InvertedResidual(), (3, 8, 8))
    assert int8_and_float_readers(proto) == []
    made_by = {o: n for n in proto.graph.node for o in n.output}
    first_add = next(n for n in proto.graph.node if n.op_type == "Add")
    float_input = [made_by[i] for i in first_add.input if made_by[i].op_type == "Conv"]
    assert [n.name for n in float_input] == ["/branch/branch.2/Conv"]


def test_int8_for_onnxruntime_has_uint8_activations_and_int8_weights(built) -> None:
    proto = onnx.load(str(built[("onnxruntime", "int8")][0]))
    activation_points = zero_points(proto, "QuantizeLinear")
    assert {p.dtype.name for p in activation_points} == {"uint8"}
    assert any(p.any() for p in activation_points)  # asymmetric: some zero points are not 0
    initializers = {i.name for i in proto.graph.initializer}
    weight_points = [p for n, p in zip([n for n in proto.graph.node
                                        if n.op_type == "DequantizeLinear"],
                                       zero_points(proto, "DequantizeLinear"))
                     if n.input[0] in initializers and p.dtype == np.int8]
    assert weight_points and all(not p.any() for p in weight_points)  # symmetric weights
    assert {"int8", "uint8", "int32"} <= set(initializer_dtypes(proto))


@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime"])
def test_int8_outputs_follow_fp32(built, backend: str) -> None:
    feed, _ = input_set("resnet", image_spec()["inputs"], 6, "validation")
    (ref,) = ort_run(built[(backend, "fp32")][0], feed)
    (out,) = ort_run(built[(backend, "int8")][0], feed)
    cosine = float(np.sum(out * ref) / (np.linalg.norm(out) * np.linalg.norm(ref)))
    assert cosine > 0.9 and rel_l2(out, ref) < 0.6
    assert not np.allclose(out, ref, atol=1e-4)  # really quantised


def test_reports_are_written_with_a_node_index(built, workdir: Path) -> None:
    for (backend, precision), (output, report) in built.items():
        assert read_json(workdir / f"{backend}-{precision}.json") == report
        proto = onnx.load(str(output))
        assert report["nodes"] == len(proto.graph.node) == len(report["node_index"])
        first = proto.graph.node[0]
        assert report["node_index"][0] == f"'{first.name}' ({first.op_type})"
        assert report["precision"] == precision and report["backend"] == backend


def test_int8_without_calibration_is_refused(resnet_patched, tmp_path: Path) -> None:
    with pytest.raises(TrtflowError, match="model 'resnet': int8 needs a calibration set"):
        make_precision("resnet", "int8", resnet_patched["tensorrt"], tmp_path / "o.onnx",
                       tmp_path / "o.json", "tensorrt")
    assert list(tmp_path.iterdir()) == []


def test_unknown_precision_is_refused(resnet_patched, tmp_path: Path) -> None:
    with pytest.raises(TrtflowError, match="unknown precision 'int4'"):
        make_precision("resnet", "int4", resnet_patched["tensorrt"], tmp_path / "o.onnx",
                       tmp_path / "o.json", "tensorrt")


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_int8_token_model_calibrates_on_the_inputs_its_graph_takes(tmp_path: Path,
                                                                     backend: str) -> None:
    """For TensorRT the patch stage narrows the int64 tokens to int32; calibration must follow."""
    spec = token_spec()
    _, source = exported(tmp_path, "tokens", spec)
    patched = tmp_path / "patched.onnx"
    patch_onnx("tokens", source, patched, tmp_path / "p.json", backend, PATCH_OPTIONS)
    report = make_precision("tokens", "int8", patched, tmp_path / "int8.onnx", tmp_path / "r.json",
                            backend, calibration_arrays("tokens", spec["inputs"], 4, 0),
                            calibration_options(tmp_path / "ranges"))
    assert report["quantize_linear"] > 0 and report["calibration"]["samples"] == 4


# --- helpers -----------------------------------------------------------------------------------

def test_calibration_reader_yields_one_sample_per_call_and_rewinds() -> None:
    arrays = {"a": np.arange(6).reshape(3, 2), "b": np.arange(3) * 10}
    reader = ArrayCalibrationReader(arrays)
    batches = [reader.get_next() for _ in range(4)]
    assert batches[3] is None
    assert [b["b"].tolist() for b in batches[:3]] == [[0], [10], [20]]
    assert batches[1]["a"].shape == (1, 2) and batches[1]["a"].tolist() == [[2, 3]]
    reader.rewind()
    assert reader.get_next()["b"].tolist() == [0]


def test_quantization_settings_per_backend() -> None:
    from onnxruntime.quantization import QuantType

    trt = quantization_settings("tensorrt")
    assert trt["activation_type"] == QuantType.QInt8 and trt["weight_type"] == QuantType.QInt8
    assert trt["extra_options"] == {"ActivationSymmetric": True, "WeightSymmetric": True,
                                    "QuantizeBias": False, "DedicatedQDQPair": True}
    ort = quantization_settings("onnxruntime")
    assert ort["activation_type"] == QuantType.QUInt8 and ort["weight_type"] == QuantType.QInt8


def test_calibration_arrays_are_the_calibration_input_set() -> None:
    specs = image_spec()["inputs"]
    arrays = calibration_arrays("resnet", specs, 3, seed=4)
    expected, _ = input_set("resnet", specs, 3, "calibration", 4)
    validation, _ = input_set("resnet", specs, 3, "validation", 4)
    np.testing.assert_array_equal(arrays["input"], expected["input"])
    assert not np.allclose(arrays["input"], validation["input"])


def test_op_histogram_and_initializer_dtypes_on_a_built_graph() -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"]), onnx.helper.make_node("Relu", ["y"], ["z"]),
         onnx.helper.make_node("Relu", ["z"], ["out"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "w"),
         numpy_helper.from_array(np.ones(2, np.int64), "unused")])
    model = onnx.helper.make_model(graph)
    assert op_histogram(model) == {"Add": 1, "Relu": 2}
    assert initializer_dtypes(model) == {"float32": 1, "int64": 1}


def test_duplicate_nodes_are_dropped_and_subgraph_nodes_listed() -> None:
    from onnx import TensorProto, helper

    from trtflow.precision import drop_duplicate_nodes, subgraph_node_names

    cast = helper.make_node("Cast", ["x"], ["x32"], name="x_cast", to=TensorProto.FLOAT)
    body = helper.make_graph([helper.make_node("Identity", ["x32"], ["out"], name="inner")], "b", [],
                             [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    guard = helper.make_node("If", ["c"], ["y"], name="guard", then_branch=body, else_branch=body)
    graph = helper.make_graph([cast, helper.make_node("Cast", ["x"], ["x32"], name="x_cast",
                                                      to=TensorProto.FLOAT), guard], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2]),
                               helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert drop_duplicate_nodes(graph) == 1
    assert [n.name for n in graph.node] == ["x_cast", "guard"]
    assert subgraph_node_names(graph) == ["inner", "inner"]


# --- mixed precision (keep_precision) and calibration ---------------------------------------------

def first_conv(proto) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.op_type == "Conv")


@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime"])
def test_keep_precision_leaves_a_named_node_out_of_int8(resnet_patched, calibration, tmp_path: Path,
                                                         backend: str) -> None:
    name = first_conv(onnx.load(str(resnet_patched[backend]))).name
    report = make_precision("resnet", "int8", resnet_patched[backend], tmp_path / "int8.onnx",
                            tmp_path / "int8.json", backend, calibration,
                            calibration_options(tmp_path / "ranges"),
                            keep_precision={"fp16": {"nodes": [name]}})
    proto = onnx.load(str(tmp_path / "int8.onnx"))
    fed = dequantized_consumers(proto)
    assert name not in fed["Conv"] and len(fed["Conv"]) > 0
    assert report["kept_float"] == {"fp16": [name], "fp32": []}


def test_keep_precision_fp32_by_op_type_stays_float32_in_fp16(resnet_patched, tmp_path: Path) -> None:
    report = make_precision("resnet", "fp16", resnet_patched["tensorrt"], tmp_path / "fp16.onnx",
                            tmp_path / "fp16.json", "tensorrt",
                            keep_precision={"fp32": {"op_types": ["Gemm"]}})
    proto = onnx.load(str(tmp_path / "fp16.onnx"))
    initializers = {i.name: i.data_type for i in proto.graph.initializer}
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    assert initializers[gemm.input[1]] == onnx.TensorProto.FLOAT
    assert initializers[first_conv(proto).input[1]] == onnx.TensorProto.FLOAT16
    assert report["kept_float"]["fp32"] == [gemm.name]


def test_keep_precision_refuses_a_node_the_graph_lacks(resnet_patched, tmp_path: Path) -> None:
    with pytest.raises(TrtflowError, match=r"model 'resnet': file '.*patched-tensorrt.onnx': "
                                           r"keep_precision names nodes the graph does not have: "
                                           r"\['/no/such/Conv'\]"):
        make_precision("resnet", "fp16", resnet_patched["tensorrt"], tmp_path / "fp16.onnx",
                       tmp_path / "fp16.json", "tensorrt",
                       keep_precision={"fp32": {"nodes": ["/no/such/Conv"]}})
    assert not (tmp_path / "fp16.onnx").exists()


def test_calibration_ranges_are_cached_by_graph_and_data(resnet_patched, calibration,
                                                         tmp_path: Path, caplog) -> None:
    import logging

    from trtflow.calibration import activation_ranges

    def ranges(arrays) -> Path:
        return activation_ranges(resnet_patched["tensorrt"], arrays, "percentile", True, 99.99,
                                 tmp_path, "resnet").path

    first = ranges(calibration)
    stamp = first.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="trtflow.calibration"):
        again = ranges(calibration)
    assert again == first and first.stat().st_mtime_ns == stamp
    assert "cached ranges" in caplog.text
    fewer = ranges({k: v[:4] for k, v in calibration.items()})
    assert fewer != first and fewer.is_file()  # other data: other ranges, never the cached ones


@pytest.mark.parametrize("damage", [lambda data: data[: len(data) // 2], lambda data: b"{}"])
def test_a_corrupt_calibration_cache_is_named_removed_and_made_again(
        resnet_patched, calibration, tmp_path: Path, caplog, damage) -> None:
    """Issue 24 case 10: a truncated cache entry failed every run with onnxruntime's
    JSONDecodeError, the file never named nor removed."""
    import logging

    from onnxruntime.quantization.calibrate import load_tensors_data

    from trtflow.calibration import activation_ranges

    def ranges():
        return activation_ranges(resnet_patched["tensorrt"], calibration, "minmax", True, 99.99,
                                 tmp_path, "resnet")

    made = ranges()
    path = made.path
    intact = path.read_bytes()
    path.write_bytes(damage(intact))
    with caplog.at_level(logging.INFO, logger="trtflow.calibration"):
        again = ranges()
    assert again == made
    assert f"the cached ranges {path} are corrupt" in caplog.text and "calibrating again" in caplog.text
    assert "minmax over 8 samples" in caplog.text  # recomputed
    assert load_tensors_data(path).data.keys() == json_ranges(intact)


def json_ranges(data: bytes) -> set:
    import json

    return set(json.loads(data)["data"])


def test_percentile_calibration_clips_outliers_that_minmax_keeps(resnet_patched, calibration,
                                                                 tmp_path: Path) -> None:
    from onnxruntime.quantization.calibrate import load_tensors_data

    from trtflow.calibration import activation_ranges

    def highest(method: str) -> Dict[str, float]:
        path, made_by, fallback = activation_ranges(resnet_patched["tensorrt"], calibration, method,
                                                    method != "minmax", 99.0, tmp_path, "resnet")
        assert made_by == method and fallback == {} and f"-{method}-" in path.name
        return {k: float(np.abs(np.asarray(v.range_value, dtype=np.float64)).max())
                for k, v in load_tensors_data(path).data.items()}

    minmax, percentile = highest("minmax"), highest("percentile")
    assert set(minmax) == set(percentile)
    assert all(percentile[k] <= minmax[k] + 1e-6 for k in minmax)
    assert sum(percentile[k] < 0.99 * minmax[k] for k in minmax) > len(minmax) // 2


def test_calibration_images_come_from_the_users_folder(tmp_path: Path) -> None:
    from skimage import io

    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    io.imsave(tmp_path / "imgs" / "a.png", (rng.random((40, 50, 3)) * 255).astype(np.uint8))
    io.imsave(tmp_path / "imgs" / "sub" / "b.jpg", (rng.random((60, 30)) * 255).astype(np.uint8))
    specs = image_spec()["inputs"]
    ours = calibration_arrays("resnet", specs, 4, seed=0, images=str(tmp_path / "imgs"))
    builtin = calibration_arrays("resnet", specs, 4, seed=0)
    assert ours["input"].shape == builtin["input"].shape and not np.allclose(ours["input"],
                                                                             builtin["input"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrtflowError, match="calibration.images: no images"):
        calibration_arrays("resnet", specs, 4, seed=0, images=str(tmp_path / "empty"))


def test_box_arithmetic_adds_stay_float_residual_adds_do_not(tmp_path: Path) -> None:
    """An Add of two layer outputs is a residual join (int8); centre + offset of box decoding,
    made of Slice and Mul of a head's output, stays float on both backends, and so does a head's
    output added to anchor logits (RT-DETR's encoder proposals, +inf at invalid anchors: that
    Add quantised lost RT-DETR every detection)."""
    import torch

    class HeadAndDecode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1)
            self.head = torch.nn.Conv2d(4, 1, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            y = y + self.b(y)  # residual
            deltas = y.flatten(1)
            anchor = x[:, :1]
            logits = torch.where(anchor > 0.1, torch.log(anchor / (1 - anchor)),
                                 torch.full_like(anchor, float("inf")))
            proposals = self.head(y) + logits  # head output + anchor logits
            return deltas[:, :8] * 0.5 + deltas[:, 8:16], proposals  # box decoding arithmetic

    source = tmp_path / "decode.onnx"
    torch.onnx.export(HeadAndDecode().eval(), (torch.rand(1, 3, 4, 4),), str(source),
                      input_names=["x"], output_names=["boxes", "proposals"], opset_version=17,
                      dynamo=False)
    feed = {"x": np.random.default_rng(0).random((4, 3, 4, 4), dtype=np.float32)}
    for backend in ("tensorrt", "onnxruntime"):
        make_precision("decode", "int8", source, tmp_path / f"{backend}.onnx",
                       tmp_path / f"{backend}.json", backend, feed,
                       calibration_options(tmp_path / "ranges"))
        proto = onnx.load(str(tmp_path / f"{backend}.onnx"))
        adds = [n.name for n in proto.graph.node if n.op_type == "Add"]
        fed = dequantized_consumers(proto)
        produced_by = {o: n for n in proto.graph.node for o in n.output}
        proposals = next(n for n in proto.graph.node if n.op_type == "Add" and any(
            produced_by.get(i) is not None and produced_by[i].op_type == "Where" for i in n.input))
        residual = [n for n in adds if n != proposals.name and n in fed["Add"]]
        assert len(adds) == 3 and len(residual) == 1, backend  # the residual join only
        # the anchors side stays float on both; TensorRT's form reads the head's output float
        # too, ONNX Runtime's keeps that input's pair (the quantiser may have folded a Relu in it)
        anchors = [i for i in proposals.input if produced_by[i].op_type == "Where"]
        assert all(produced_by[i].op_type != "DequantizeLinear" for i in anchors), backend
        assert (proposals.name in fed["Add"]) == (backend == "onnxruntime"), backend
        assert not fed["Mul"] and not fed["Slice"] and not fed["Where"], backend


def test_vanishing_activations_fall_back_to_minmax_for_that_tensor_only(tmp_path: Path, caplog) -> None:
    """A layer whose outputs all but vanish has no 2048-bin histogram: that tensor, and only it,
    gets its min/max range; the others keep percentile (issue 22: the whole model used to switch
    to min/max, in a cache named -percentile-). The cache is named by the methods really used
    and says which tensors fell back when it is read again."""
    import logging

    import torch
    from onnxruntime.quantization.calibrate import load_tensors_data

    from trtflow.calibration import activation_ranges

    class VanishingBranch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wide, self.tiny = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 4, 1)
            with torch.no_grad():
                self.tiny.weight.mul_(1e-17)  # outputs 1e-11 apart by ~1e-17: below float32 bins
                self.tiny.bias.fill_(1e-11)

        def forward(self, x):
            return self.wide(x), self.tiny(x)

    source = tmp_path / "branches.onnx"
    torch.onnx.export(VanishingBranch().eval(), (torch.rand(1, 3, 4, 4),), str(source),
                      input_names=["x"], output_names=["wide", "tiny"], opset_version=17,
                      dynamo=False)
    feed = {"x": np.random.default_rng(0).random((4, 3, 4, 4), dtype=np.float32) * 4}
    with caplog.at_level(logging.WARNING, logger="trtflow.calibration"):
        ranges = activation_ranges(source, feed, "percentile", True, 90.0, tmp_path, "branches")
    assert ranges.method == "percentile" and ranges.fallback == {"tiny": "minmax"}
    assert ranges.methods == "percentile+minmax" and "-percentile+minmax-" in ranges.path.name
    assert "1 tensors have no percentile histogram" in caplog.text and "tiny" in caplog.text
    data = load_tensors_data(ranges.path).data
    assert np.isclose(float(data["tiny"].range_value[1]), 1e-11, rtol=1e-3)  # its min/max
    assert hasattr(data["wide"], "hist") and hasattr(data["x"], "hist")  # percentile
    # percentile 90 clips the wide layer below its maximum: not min/max
    wide = np.einsum("oc,nchw->nochw", np.ones((1, 3)), feed["x"])  # a bound, not the values
    assert float(data["wide"].range_value[1]) < float(np.abs(wide).max()) * 10
    assert activation_ranges(source, feed, "percentile", True, 90.0, tmp_path, "branches") == ranges
    assert len(list(tmp_path.glob("branches-*.json"))) == 1


def test_a_model_with_no_histogram_anywhere_is_calibrated_with_minmax(tmp_path: Path) -> None:
    import torch

    from trtflow.calibration import activation_ranges

    conv = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():  # the identity: its output vanishes as its input does
        conv.weight.copy_(torch.eye(3)[:, :, None, None])
        conv.bias.zero_()
    source = tmp_path / "tiny.onnx"
    torch.onnx.export(conv.eval(), (torch.full((1, 3, 4, 4), 1e-11),), str(source),
                      input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    rng = np.random.default_rng(0)  # the input all but vanishes too
    feed = {"x": (1e-11 + 1e-17 * rng.random((2, 3, 4, 4))).astype(np.float32)}
    ranges = activation_ranges(source, feed, "percentile", True, 99.99, tmp_path, "tiny")
    assert ranges.method == "minmax" and ranges.fallback == {} and "-minmax-" in ranges.path.name


def test_int8_quantisation_leaves_out_the_preprocessing_advice(resnet_patched, calibration,
                                                              tmp_path: Path, caplog) -> None:
    """ONNX Runtime's "Please consider to run pre-processing before quantization" (twice per
    graph) is dropped while trtflow quantises, and only then: its pre-processing changes nothing
    in these graphs (trtflow.precision.without_preprocessing_advice)."""
    import logging

    with caplog.at_level(logging.WARNING):
        make_precision("resnet", "int8", resnet_patched["onnxruntime"], tmp_path / "int8.onnx",
                       tmp_path / "int8.json", "onnxruntime", calibration,
                       calibration_options(tmp_path / "ranges"))
        assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
        logging.getLogger().warning("Please consider pre-processing before quantization")
    assert [r.getMessage() for r in caplog.records] == [
        "Please consider pre-processing before quantization"]
