"""Precision stage: precision lives in the ONNX graph.

fp32 is the patched graph as is; fp16 converts weights and compute to float16 and keeps float32
I/O (Casts at the edges); int8 inserts QuantizeLinear/DequantizeLinear pairs calibrated on real
inputs (ONNX Runtime's static quantization). This is the form every TensorRT from 8.6 to 11
accepts (11 dropped the FP16/INT8 builder flags) and that ONNX Runtime runs directly.
"""
from __future__ import annotations

import collections
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from .errors import TrtflowError
from .io import atomic_path, load_onnx, write_json
from .runners.base import TensorSpec, adapt_feed

log = logging.getLogger(__name__)


# What TensorRT runs in int8 and so gets Q/DQ on its inputs; everything else (activations,
# Sigmoid/Mul of SiLU, Softmax, TopK, Gather, NMS, shape arithmetic, the outputs) stays float,
# so that TensorRT can fuse Conv+activation and keep the rest in fp16. Add is quantised for
# residual connections, reduced to one input by tensorrt_placement.
TENSORRT_INT8_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool",
                     "GlobalAveragePool")
# ops TensorRT moves Q/DQ through: a pair in front of them stays
QDQ_SHUFFLES = ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")
# layers whose output TensorRT adds into a following Add in the same kernel
FUSED_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def quantization_settings(backend: str, form: str = "u8s8") -> Dict[str, Any]:
    """Q/DQ flavour per backend.

    TensorRT only takes symmetric int8 (zero point 0) and no int32 bias quantisation, with a
    dedicated Q/DQ pair per consumer. ONNX Runtime gets the form its kernels run right on the
    target CPU (trtflow.cpu: U8S8 with VNNI or on Arm64, U8U8 on AVX2/AVX-512 without VNNI, whose
    U8S8 kernels saturate).
    """
    from onnxruntime.quantization import QuantType

    from .cpu import FORM_SETTINGS

    if backend == "tensorrt":
        return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
                "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True,
                                  "QuantizeBias": False, "DedicatedQDQPair": True}}
    if form not in FORM_SETTINGS:
        raise TrtflowError(f"unknown ONNX Runtime int8 form '{form}'",
                           fix=f"use one of {sorted(FORM_SETTINGS)}")
    chosen = FORM_SETTINGS[form]
    return {"activation_type": getattr(QuantType, chosen["activation_type"]),
            "weight_type": getattr(QuantType, chosen["weight_type"]),
            "extra_options": {"WeightSymmetric": chosen["weight_type"] == "QInt8"}}


class ArrayCalibrationReader:
    """onnxruntime CalibrationDataReader over in-memory arrays, one sample per call."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._arrays = arrays
        self._count = next(iter(arrays.values())).shape[0]
        self._iter: Iterator[int] = iter(range(self._count))

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        index = next(self._iter, None)
        if index is None:
            return None
        return {name: array[index:index + 1] for name, array in self._arrays.items()}

    def rewind(self) -> None:
        self._iter = iter(range(self._count))


def op_histogram(model_proto) -> Dict[str, int]:
    return dict(collections.Counter(node.op_type for node in model_proto.graph.node))


def initializer_dtypes(model_proto) -> Dict[str, int]:
    import onnx

    names = (onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
             for t in model_proto.graph.initializer)
    return dict(collections.Counter(names))


def graph_inputs(graph) -> List[TensorSpec]:
    import onnx

    return [TensorSpec(i.name, onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name,
                       [d.dim_value or -1 for d in i.type.tensor_type.shape.dim]) for i in graph.input]


def drop_duplicate_nodes(graph) -> int:
    """Remove nodes identical to an earlier one (ONNX Runtime refuses the repeated names and
    outputs); return how many.

    The float16 converter puts a Cast before each fp32-only consumer and names it (and its output)
    after the tensor, so a tensor feeding two such consumers (RoiAlign in Mask R-CNN) gets the
    same Cast twice."""
    seen = set()
    duplicates = []
    for node in graph.node:
        key = node.SerializeToString()
        if key in seen:
            duplicates.append(node)
        seen.add(key)
    for node in duplicates:
        graph.node.remove(node)
    return len(duplicates)


def to_fp16(source: Path, output: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_onnx(source)
    # keep_io_types: callers feed and read float32, the Casts sit at the graph's edges
    converted = convert_float_to_float16(model, keep_io_types=True)
    drop_duplicate_nodes(converted.graph)
    with atomic_path(output) as tmp:
        onnx.save(converted, str(tmp))


def subgraph_node_names(graph) -> List[str]:
    """Names of every node inside a control-flow body (Loop, If, Scan), at any depth."""
    names: List[str] = []
    for node in graph.node:
        for attribute in node.attribute:
            bodies = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
            for body in bodies:
                names += [n.name for n in body.node if n.name]
                names += subgraph_node_names(body)
    return names


def to_int8(source: Path, output: Path, calibration: Mapping[str, np.ndarray], backend: str,
            method: str = "minmax", per_channel: bool = True, form: str = "u8s8") -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    settings = quantization_settings(backend, form)
    graph = load_onnx(source).graph
    # the patch stage may have narrowed int64 inputs to int32 (TensorRT): feed what the graph takes
    calibration = adapt_feed(calibration, graph_inputs(graph), f"graph {source}")
    if backend == "tensorrt":
        # Q/DQ inside Loop/If bodies (Keypoint R-CNN's heatmap decoding loop) reaches shape
        # computations there, and TensorRT refuses int8 shape tensors: keep those bodies float
        settings["nodes_to_exclude"] = subgraph_node_names(graph) + bias_adds(graph)
        settings["op_types_to_quantize"] = list(TENSORRT_INT8_OPS)
    with atomic_path(output) as tmp:
        quantize_static(str(source), str(tmp), ArrayCalibrationReader(calibration),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        calibrate_method=methods[method], **settings)
        if backend == "tensorrt":
            import onnx

            onnx.save(tensorrt_placement(load_onnx(tmp)), str(tmp))


def tensorrt_placement(model):
    """ONNX Runtime's Q/DQ reduced to TensorRT's rules, as ModelOpt places them
    (benchmarks/gpu/int8-placement.md):
    - a pair stays only where it feeds an op TensorRT runs in int8 (TENSORRT_INT8_OPS) or a
      shuffle it moves Q/DQ through (Flatten, Reshape, ...): ONNX Runtime also quantises each
      Conv's output ahead of its Relu, which stops TensorRT fusing Conv+ReLU;
    - one input of each residual Add, not both: TensorRT adds into the epilogue of the layer
      producing the other (a Conv), which a pair on that input would stop (an Add with a
      constant input, a bias, is not quantised at all: bias_adds)."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    for node in list(graph.nodes):
        if node.op in TENSORRT_INT8_OPS or node.op in QDQ_SHUFFLES:
            continue
        for index, tensor in enumerate(list(node.inputs)):
            source = _float_source(tensor)
            if source is not None:  # other consumers of the pair (an int8 op) keep it
                node.inputs[index] = source
    _keep_adds_fusible(graph)
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def _keep_adds_fusible(graph) -> None:
    for add in [n for n in graph.nodes if n.op == "Add"]:
        sources = [_float_source(tensor) for tensor in add.inputs]
        if not all(source is not None for source in sources):
            continue
        fused = [index for index, source in enumerate(sources)
                 if source.inputs and source.inputs[0].op in FUSED_PRODUCERS]
        for index in fused[:1]:
            add.inputs[index] = sources[index]


def _float_source(tensor):
    """The float tensor a QuantizeLinear -> DequantizeLinear pair turned into `tensor`, or None
    where `tensor` is not such a pair's output."""
    from .patch import producer

    dequantize = producer(tensor, "DequantizeLinear")
    quantize = producer(dequantize.inputs[0], "QuantizeLinear") if dequantize is not None else None
    return quantize.inputs[0] if quantize is not None else None


def bias_adds(graph) -> List[str]:
    """Add nodes with a constant input: a bias, not a residual connection (no int8 Add)."""
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "Add" and any(i in constants for i in n.input)]


def make_precision(model: str, precision: str, source: Path, output: Path, report_path: Path,
                   backend: str, calibration: Optional[Mapping[str, np.ndarray]] = None,
                   calibration_method: Optional[str] = None,
                   int8_form: str = "u8s8") -> Dict[str, Any]:
    import onnx

    log.info("precision %s: %s for %s", model, precision, backend)
    if precision == "fp32":
        with atomic_path(output) as tmp:
            shutil.copyfile(source, tmp)
    elif precision == "fp16":
        to_fp16(source, output)
    elif precision == "int8":
        if calibration is None:
            raise TrtflowError("int8 needs a calibration set", model=model)
        calibration_method = calibration_method or "minmax"
        to_int8(source, output, calibration, backend, calibration_method, form=int8_form)
    else:
        raise TrtflowError(f"unknown precision '{precision}'", model=model,
                           fix="use fp32, fp16 or int8")
    proto = onnx.load(str(output))
    ops = op_histogram(proto)
    report = {"model": model, "precision": precision, "backend": backend,
              "nodes": len(proto.graph.node), "op_types": ops,
              "initializer_dtypes": initializer_dtypes(proto),
              "quantize_linear": ops.get("QuantizeLinear", 0),
              "dequantize_linear": ops.get("DequantizeLinear", 0),
              # TensorRT 8.x parser errors give only a node index: this names it
              "node_index": [f"'{n.name}' ({n.op_type})" for n in proto.graph.node]}
    if precision == "int8":
        report["calibration"] = {"method": calibration_method,
                                 "samples": int(next(iter(calibration.values())).shape[0])}
        report["int8_form"] = "s8s8-symmetric" if backend == "tensorrt" else int8_form
        if report["quantize_linear"] == 0:
            raise TrtflowError("int8 quantisation inserted no QuantizeLinear node", model=model,
                               path=str(output), fix="check that the graph has Conv/MatMul/Gemm ops")
    write_json(report_path, report)
    return report


def calibration_arrays(model: str, specs: Sequence[Mapping[str, Any]], num_samples: int,
                       seed: int) -> Dict[str, np.ndarray]:
    from .data import input_set

    arrays, _ = input_set(model, specs, num_samples, "calibration", seed)
    return arrays
