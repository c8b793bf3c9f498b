"""Precision stage: precision lives in the ONNX graph.

fp32 is the patched graph as is; fp16 converts weights and compute to float16 and keeps float32
I/O (Casts at the edges); int8 inserts QuantizeLinear/DequantizeLinear pairs calibrated on real
inputs (ONNX Runtime's static quantization). This is the form every TensorRT from 8.6 to 11
accepts (11 dropped the FP16/INT8 builder flags) and that ONNX Runtime runs directly.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from .errors import TrtflowError
from .io import atomic_path, load_onnx, write_json
from .nms import FP32_LAYER_MARK
from .runners.base import TensorSpec, adapt_feed

log = logging.getLogger(__name__)


# What TensorRT runs in int8 and so gets Q/DQ on its inputs; everything else (activations,
# Sigmoid/Mul of SiLU, Softmax, TopK, Gather, NMS, shape arithmetic, the outputs) stays float,
# so that TensorRT can fuse Conv+activation and keep the rest in fp16. Add is quantised for
# residual connections, reduced to one input by place_qdq; Mul only where it gates an activation
# (squeeze-excitation: gated_muls).
TENSORRT_INT8_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool",
                     "GlobalAveragePool", "Mul")
# ops TensorRT moves Q/DQ through: a pair in front of them stays
QDQ_SHUFFLES = ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")
# ONNX Runtime runs these in int8 on the CPU (QLinearConv, Relu/Clip folded into the range, int8
# pooling and reshapes). Not quantised on either backend: post-processing (TopK, Gather, Slice,
# Where, Softmax, Sigmoid scores, box arithmetic) and Concat, which joins boxes as often as
# features: quantising those cost int8 detectors most of their detections.
INT8_OPS = {"tensorrt": TENSORRT_INT8_OPS,
            "onnxruntime": tuple(op for op in TENSORRT_INT8_OPS if op != "Mul") + (
                "Relu", "Clip", "LeakyRelu", "Resize", "Pad", "Split") + QDQ_SHUFFLES}
# outputs of these are activations: an Add joining two of them is a residual connection (int8);
# any other Add (a bias, box decoding's offset + anchor) stays float
LAYER_OUTPUTS = tuple(op for op in TENSORRT_INT8_OPS if op not in ("Add", "Mul")) + (
    "Relu", "Clip", "LeakyRelu", "Resize", "BatchNormalization")
# element-wise ops whose output is an activation when an input is one (SiLU's x * sigmoid(x),
# residual chains); the same ops on sliced boxes and constants are arithmetic
ELEMENTWISE = ("Add", "Mul", "Sigmoid")
# layers whose output TensorRT adds into a following Add in the same kernel
FUSED_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# a squeeze-excitation gate: sigmoid of a layer's output, scaling another activation
GATES = ("Sigmoid", "HardSigmoid")


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


def to_fp16(source: Path, output: Path, keep_fp32: Sequence[str] = ()) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_onnx(source)
    # nodes a patch pass marked fp32 (nms.FP32_LAYER_MARK) stay fp32 with the keep list
    marked = [n.name for n in model.graph.node if FP32_LAYER_MARK in n.name]
    # keep_io_types: callers feed and read float32, the Casts sit at the graph's edges
    converted = convert_float_to_float16(model, keep_io_types=True,
                                         node_block_list=list(keep_fp32) + marked or None)
    drop_duplicate_nodes(converted.graph)
    drop_fp16_round_trips(converted.graph)
    with atomic_path(output) as tmp:
        onnx.save(converted, str(tmp))


def _cast_to(node) -> Optional[int]:
    """The element type a Cast node casts to, None for any other node."""
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _float32_tensors(graph) -> set:
    import onnx

    float32 = onnx.TensorProto.FLOAT
    names = {v.name for v in list(graph.input) + list(graph.value_info)
             if v.type.tensor_type.elem_type == float32}
    names |= {t.name for t in graph.initializer if t.data_type == float32}
    for node in graph.node:
        if _cast_to(node) == float32:
            names.update(node.output)
    return names


def drop_fp16_round_trips(graph) -> int:
    """Rewire Cast(fp32) <- Cast(fp16) <- fp32 tensor to the fp32 tensor. ONNX Runtime's
    converter casts every tensor between two kept-fp32 nodes to fp16 and back, which loses
    what keeping them was for: torchvision's class-shifted boxes (up to 122,395) became inf."""
    import onnx

    float16 = onnx.TensorProto.FLOAT16
    float32 = _float32_tensors(graph)
    made_by = {out: node for node in graph.node for out in node.output}
    rewired: Dict[str, str] = {}
    for node in graph.node:
        source = made_by.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if (node.output[0] in float32 and source is not None and _cast_to(source) == float16
                and source.input[0] in float32):
            rewired[node.output[0]] = source.input[0]
    if not rewired:
        return 0
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in rewired and name not in outputs:
                node.input[index] = rewired[name]
    used = {name for node in graph.node for name in node.input} | outputs
    for _ in range(2):  # the fp32 Casts, then the fp16 Casts only they read
        for node in [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in used]:
            graph.node.remove(node)
        used = {name for node in graph.node for name in node.input} | outputs
    return len(rewired)


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


class _WithoutPreprocessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def without_preprocessing_advice() -> Iterator[None]:
    """Drops ONNX Runtime's "Please consider (to run) pre-processing before quantization", which
    its quantiser logs (root logger) twice per graph. Its advice (quantization.shape_inference.
    quant_pre_process: shape inference, then ONNX Runtime's graph optimiser) was followed once to
    see what it changes: on MobileNetV2 and ResNet-18's patched graphs the int8 graph had the same
    nodes, the same Q/DQ pairs and the same outputs with and without it (issue 23). The patch
    stage has already folded constants and inferred shapes, so it gains nothing here."""
    advice = _WithoutPreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def to_int8(source: Path, output: Path, backend: str, ranges: Path, method: str,
            form: str = "u8s8", keep_float: Sequence[str] = (), per_channel: bool = True) -> None:
    """Q/DQ from ONNX Runtime's quantiser on precomputed activation ranges (trtflow.calibration),
    placed for the backend. Per-channel weights always: per-tensor weights lose most of the
    accuracy of depthwise convolutions (MobileNets), whose channels differ by 1000x in range."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    from .calibration import method_enum

    settings = quantization_settings(backend, form)
    graph = load_onnx(source).graph
    # Q/DQ inside Loop/If bodies (Keypoint R-CNN's heatmap decoding loop) reaches shape
    # computations there, which neither backend runs in int8; Adds that are not residual joins
    # (biases, box decoding arithmetic) stay float too. A kept node gets no Q/DQ of its own; in
    # ONNX Runtime's form it still reads an input another consumer quantises through that pair,
    # since the quantiser folds a Relu/Clip into the pair's range and the clipped tensor exists
    # nowhere else.
    excluded = (subgraph_node_names(graph) + float_adds(graph) + float_muls(graph)
                + list(keep_float))
    settings["op_types_to_quantize"] = list(INT8_OPS[backend])
    settings["nodes_to_exclude"] = sorted(set(excluded))
    with atomic_path(output) as tmp, without_preprocessing_advice():
        quantize_static(str(source), str(tmp), None, quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, calibrate_method=method_enum(method),
                        calibration_cache_path=str(ranges), **settings)
        # TensorRT's form: a node left float reads float (ONNX Runtime's keeps its pair: above)
        float_nodes = excluded if backend == "tensorrt" else ()
        onnx.save(place_qdq(load_onnx(tmp), backend, float_nodes), str(tmp))


def place_qdq(model, backend: str, float_nodes: Sequence[str] = ()):
    """ONNX Runtime's Q/DQ reduced to what the backend runs in int8.

    On both: a pair stays only where it feeds an int8 op (INT8_OPS) that is not one of
    `float_nodes` or, for TensorRT, a shuffle it moves Q/DQ through (Flatten, Reshape, ...).
    ONNX Runtime's quantiser also quantises the output of every quantised op, so a head's output
    reached the post-processing (Slice, box arithmetic, TopK) through an int8 pair; it stops
    TensorRT fusing Conv+ReLU too.
    For TensorRT, as ModelOpt places them (benchmarks/gpu/int8-placement.md): one input of each
    residual Add, not both: TensorRT adds into the epilogue of the layer producing the other (a
    Conv), which a pair on that input would stop (an Add with a constant input, a bias, is not
    quantised at all: float_adds)."""
    import onnx_graphsurgeon as gs

    int8_ops = set(INT8_OPS[backend]) | (set(QDQ_SHUFFLES) if backend == "tensorrt" else set())
    graph = gs.import_onnx(model)
    left_float = set(float_nodes)
    for node in list(graph.nodes):
        if node.op in int8_ops and node.name not in left_float:
            continue
        for index, tensor in enumerate(list(node.inputs)):
            source = _float_source(tensor)
            if source is not None:  # other consumers of the pair (an int8 op) keep it
                node.inputs[index] = source
    _float_graph_outputs(graph)
    _float_into_dead_end_shuffles(graph)
    if backend == "tensorrt":
        _keep_adds_fusible(graph)
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def _float_graph_outputs(graph) -> None:
    """The graph's outputs come out as computed, not through the pair the quantiser puts on a
    quantised op's output (logits rounded to 256 levels)."""
    for index, output in enumerate(list(graph.outputs)):
        source = _float_source(output)
        if source is None:
            continue
        name = output.name
        output.name = f"{name}_rounded"
        source.name = name
        source.dtype, source.shape = output.dtype or source.dtype, output.shape or source.shape
        graph.outputs[index] = source


def _float_into_dead_end_shuffles(graph) -> None:
    """No pair in front of a shuffle (Reshape, Transpose, ...) whose output is not quantised
    again: the shuffle leads into float ops, and the pair only rounded a head's output (box
    offsets, class logits) to 8 bits on its way to the post-processing. Repeated, so a chain of
    shuffles is cleared from its end."""
    changed = True
    while changed:
        changed = False
        graph.cleanup()  # drops the pairs nothing reads any more, so their Q stops counting
        for node in graph.nodes:
            if node.op not in QDQ_SHUFFLES or not node.inputs:
                continue
            if any(consumer.op == "QuantizeLinear" for output in node.outputs
                   for consumer in output.outputs):
                continue
            source = _float_source(node.inputs[0])
            if source is not None:
                node.inputs[0] = source
                changed = True


def _keep_adds_fusible(graph) -> None:
    for add in [n for n in graph.nodes if n.op == "Add"]:
        sources = [_float_source(tensor) for tensor in add.inputs]
        if not all(source is not None for source in sources):
            continue
        fused = [index for index, source in enumerate(sources)
                 if source.inputs and source.inputs[0].op in FUSED_PRODUCERS]
        # the Conv that feeds only this Add, not the skip connection's (MobileNetV2's x + conv(x),
        # where x is the last block's projection): a skip Conv read in float here and in int8 by
        # the next block would have to write both
        fused.sort(key=lambda index: len(sources[index].outputs))
        for index in fused[:1]:
            add.inputs[index] = sources[index]


def _float_source(tensor):
    """The float tensor a QuantizeLinear -> DequantizeLinear pair turned into `tensor`, or None
    where `tensor` is not such a pair's output."""
    from .graph_surgery import producer

    dequantize = producer(tensor, "DequantizeLinear")
    quantize = producer(dequantize.inputs[0], "QuantizeLinear") if dequantize is not None else None
    return quantize.inputs[0] if quantize is not None else None


def float_adds(graph) -> List[str]:
    """Add nodes that are not residual connections and so get no int8: a constant input (a bias)
    or an input that is not a layer's activation. Box decoding adds a head's output to anchors or
    reference points (RT-DETR's encoder proposals: the anchors' logits, +inf where an anchor is
    invalid); quantised, that Add cost RT-DETR every detection on both backends."""
    constants = _constant_names(graph)
    activation = _activation_test(graph, constants)
    return [n.name for n in graph.node if n.op_type == "Add" and (
        any(i in constants for i in n.input) or not all(activation(i) for i in n.input))]


def float_muls(graph) -> List[str]:
    """Every Mul but the squeeze-excitation gates (gated_muls) stays float: SiLU's x * sigmoid(x)
    fuses into its convolution's epilogue, and the rest is arithmetic (scales, box decoding)."""
    gates = set(gated_muls(graph))
    return [n.name for n in graph.node if n.op_type == "Mul" and n.name not in gates]


def gated_muls(graph) -> List[str]:
    """Mul nodes scaling an activation by a gate (GATES) of another layer's output: the
    squeeze-excitation of EfficientNet, MobileNetV3, RegNetY. TensorRT gets Q/DQ on both inputs, as
    ModelOpt places them (the Mul follows a Conv partition): the SiLU in front then feeds only int8
    consumers (this Mul and the pooling of the excitation) and TensorRT fuses it into the int8
    convolution. Left float, each such SiLU ran as its own pointwise layer behind a reformat
    (efficientnet_v2_s: 164 reformats, 29 % of its int8 layer time; benchmarks/gpu/int8-vs-fp16.md)."""
    constants = _constant_names(graph)
    activation = _activation_test(graph, constants)
    made_by = {o: n for n in graph.node for o in n.output}

    def gate_of_layer(name: str, other: str) -> bool:
        gate = made_by.get(name)
        if gate is None or gate.op_type not in GATES or gate.input[0] == other:
            return False  # x * sigmoid(x) is SiLU, not a gate
        layer = made_by.get(gate.input[0])
        return layer is not None and layer.op_type in FUSED_PRODUCERS

    return [n.name for n in graph.node if n.op_type == "Mul" and len(n.input) == 2
            and not any(i in constants for i in n.input)
            and any(gate_of_layer(a, b) and activation(b)
                    for a, b in (n.input, tuple(reversed(n.input))))]


def _constant_names(graph) -> set:
    return {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output}


def _activation_test(graph, constants: set):
    """A test of whether a tensor is a layer's activation (LAYER_OUTPUTS, or element-wise ops of
    one), memoised over the graph."""
    made_by = {o: n for n in graph.node for o in n.output}
    memo: Dict[str, bool] = {}

    def activation(name: str) -> bool:
        if name not in memo:
            memo[name] = False  # a cycle (none in a valid graph) ends here
            node = made_by.get(name)
            memo[name] = node is not None and (node.op_type in LAYER_OUTPUTS or (
                node.op_type in ELEMENTWISE
                and any(activation(i) for i in node.input if i not in constants)))
        return memo[name]

    return activation


def kept_nodes(graph, selection: Optional[Mapping[str, Sequence[str]]], model: str,
               source: Path) -> List[str]:
    """The nodes a keep_precision selection names, by node name or op type; a name that is not
    in the graph is refused (a typo would otherwise keep nothing and say nothing)."""
    if not selection:
        return []
    names = {n.name for n in graph.node}
    missing = sorted(set(selection.get("nodes") or ()) - names)
    if missing:
        raise TrtflowError(f"keep_precision names nodes the graph does not have: {missing}",
                           model=model, path=str(source),
                           fix="use node names of the patched graph (netron, or the report's "
                           "node_index beside the precision graph), or write the list with "
                           "`snakemake debug_precision`")
    op_types = set(selection.get("op_types") or ())
    return [n.name for n in graph.node
            if n.name in set(selection.get("nodes") or ()) or n.op_type in op_types]


def make_precision(model: str, precision: str, source: Path, output: Path, report_path: Path,
                   backend: str, calibration: Optional[Mapping[str, np.ndarray]] = None,
                   calibration_options: Optional[Mapping[str, Any]] = None,
                   int8_form: str = "u8s8",
                   keep_precision: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The precision graph and its report. calibration_options (int8): method (resolved for the
    backend), percentile, cache_dir. keep_precision: the model's mixed-precision lists."""
    import onnx

    log.info("precision %s: %s for %s", model, precision, backend)
    keep_precision = keep_precision or {}
    graph = load_onnx(source).graph
    keep_fp32 = kept_nodes(graph, keep_precision.get("fp32"), model, source)
    keep_fp16 = kept_nodes(graph, keep_precision.get("fp16"), model, source)
    calibrated = None
    if precision == "fp32":
        with atomic_path(output) as tmp:
            shutil.copyfile(source, tmp)
    elif precision == "fp16":
        to_fp16(source, output, keep_fp32)
    elif precision == "int8":
        calibrated = _int8(model, source, output, backend, calibration, calibration_options,
                           int8_form, keep_fp16 + keep_fp32)
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
              "kept_float": {"fp32": keep_fp32, "fp16": keep_fp16 if precision == "int8" else []},
              # TensorRT 8.x parser errors give only a node index: this names it
              "node_index": [f"'{n.name}' ({n.op_type})" for n in proto.graph.node]}
    if calibrated is not None:
        report["calibration"] = calibrated
        report["int8_form"] = "s8s8-symmetric" if backend == "tensorrt" else int8_form
        if report["quantize_linear"] == 0:
            raise TrtflowError("int8 quantisation inserted no QuantizeLinear node", model=model,
                               path=str(output), fix="check that the graph has Conv/MatMul/Gemm ops")
    write_json(report_path, report)
    return report


def _int8(model: str, source: Path, output: Path, backend: str,
          calibration: Optional[Mapping[str, np.ndarray]],
          options: Optional[Mapping[str, Any]], form: str, keep_float: Sequence[str]
          ) -> Dict[str, Any]:
    """Calibrate (or reuse cached ranges), quantise; what the report says about calibration."""
    from .calibration import activation_ranges, resolve_method

    if calibration is None or options is None:
        raise TrtflowError("int8 needs a calibration set and calibration options", model=model)
    method = resolve_method(options["method"], backend)
    # the patch stage may have narrowed int64 inputs to int32 (TensorRT): feed what the graph takes
    calibration = adapt_feed(calibration, graph_inputs(load_onnx(source).graph), f"graph {source}")
    # histogram methods calibrate |x| (one range for both signs, TensorRT's form); min/max is
    # symmetrised by the quantiser where the form wants it
    ranges = activation_ranges(source, calibration, method, symmetric=method != "minmax",
                               percentile=float(options["percentile"]),
                               cache_dir=Path(options["cache_dir"]), model=model)
    to_int8(source, output, backend, ranges.path, ranges.method, form, keep_float)
    # `method` made every range but the fallback tensors' (no histogram: min/max)
    return {"method": ranges.method, "methods": ranges.methods,
            "percentile": options["percentile"] if ranges.method == "percentile" else None,
            "fallback": {"method": "minmax", "count": len(ranges.fallback),
                         "tensors": sorted(ranges.fallback)} if ranges.fallback else None,
            "samples": int(next(iter(calibration.values())).shape[0]), "ranges": str(ranges.path)}
