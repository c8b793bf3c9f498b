"""Layer precision in TensorRT builds: the builder flags of a weakly typed (8.x) build, and the
layers it is told to keep fp32 (patch-marked) or to run fp16 (tensorrt.int8_float:
fp16_layers). A strongly typed build (10, 11) takes the graph's types and none of these."""
from __future__ import annotations

from typing import Any, Dict, List

from ..nms import FP32_LAYER_MARK


def precision_flags(trt, precision: str, strongly_typed: bool) -> List[str]:
    """Builder flags for a weakly typed (TensorRT 8.x) build of the precision ONNX. int8 also
    allows fp16: the layers the Q/DQ placement leaves float (activations after fusion,
    post-processing) then run in fp16, not fp32 (benchmarks/gpu/int8-placement.md)."""
    if strongly_typed:
        return []  # the graph's types decide; these flags are an error in 10 and gone in 11
    wanted = {"fp16": ["FP16"], "int8": ["FP16", "INT8"]}.get(precision, [])
    return [name for name in wanted if hasattr(trt.BuilderFlag, name)]


def _floats_read(trt, layer) -> bool:
    """Whether the layer's data input is float (not index arithmetic and its Casts)."""
    data = layer.get_input(0) if layer.num_inputs else None
    return data is not None and data.dtype in (trt.float32, trt.float16)


def _constrain(trt, config, layers, dtype) -> int:
    """Each layer computes in `dtype` and writes its float outputs in it; the build prefers
    these constraints (PREFER_PRECISION_CONSTRAINTS) where it has a kernel for them."""
    count = 0
    for layer in layers:
        layer.precision = dtype
        for index in range(layer.num_outputs):
            if layer.get_output(index).dtype in (trt.float32, trt.float16):
                layer.set_output_type(index, dtype)
        count += 1
    if count:
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return count


def _layers(network) -> List[Any]:
    return [network.get_layer(index) for index in range(network.num_layers)]


def constrain_fp32_layers(trt, network, config, strongly_typed: bool) -> int:
    """Layers of nodes a patch pass marked fp32 (nms.FP32_LAYER_MARK: class-shifted boxes,
    the NMS plugin that reads them) run in fp32 in a weakly typed build, which would otherwise
    be free to take fp16 for them; a strongly typed build follows the graph's fp32 types."""
    if strongly_typed:
        return 0
    return _constrain(trt, config, [
        layer for layer in _layers(network) if FP32_LAYER_MARK in layer.name
        and layer.type != trt.LayerType.CONSTANT and _floats_read(trt, layer)], trt.float32)


# layers whose Q/DQ neighbours TensorRT moves through (DQ forward, Q backward) before fusing
_QDQ_TRANSPARENT = ("SHUFFLE", "SLICE")
# layers TensorRT fuses into the epilogue of an int8 convolution or GEMM
_EPILOGUE = ("ACTIVATION", "ELEMENTWISE", "SCALE", "UNARY")
# layers with no float arithmetic of their own
_NOT_ARITHMETIC = ("CONSTANT", "SHAPE", "IDENTITY", "CAST", "QUANTIZE", "DEQUANTIZE",
                   "PLUGIN_V2", "ASSERTION", "CONDITION", "CONDITIONAL_INPUT",
                   "CONDITIONAL_OUTPUT", "ITERATOR", "LOOP_OUTPUT", "RECURRENCE", "TRIP_LIMIT")


def int8_neighbourhood(trt, network) -> set:
    """Names of the layers an int8 build fuses with its Q/DQ pairs: those reading a
    DequantizeLayer (through shuffles and slices), the pointwise layers after them that TensorRT
    puts in their epilogue, and those writing into a QuantizeLayer (through shuffles and slices)."""
    kinds = {name: getattr(trt.LayerType, name, None) for name in
             set(_QDQ_TRANSPARENT + _EPILOGUE + ("QUANTIZE", "DEQUANTIZE"))}
    made_by: Dict[str, Any] = {}
    read_by: Dict[str, List[Any]] = {}
    layers = _layers(network)
    for layer in layers:
        for o in range(layer.num_outputs):
            made_by[layer.get_output(o).name] = layer
        for i in range(layer.num_inputs):
            tensor = layer.get_input(i)
            if tensor is not None:
                read_by.setdefault(tensor.name, []).append(layer)

    def source(tensor):  # the layer making `tensor`, looking through shuffles and slices
        layer = made_by.get(tensor.name)
        while layer is not None and layer.type in {kinds[k] for k in _QDQ_TRANSPARENT}:
            layer = made_by.get(layer.get_input(0).name)
        return layer

    def readers(tensor):  # the layers reading `tensor`, looking through shuffles and slices
        found = []
        for layer in read_by.get(tensor.name, []):
            if layer.type in {kinds[k] for k in _QDQ_TRANSPARENT}:
                found += readers(layer.get_output(0))
            else:
                found.append(layer)
        return found

    near = set()
    for layer in layers:
        inputs = [layer.get_input(i) for i in range(layer.num_inputs)]
        if any(t is not None and getattr(source(t), "type", None) == kinds["DEQUANTIZE"]
               for t in inputs):
            near.add(layer.name)
            tail = layer
            while tail.num_outputs == 1:  # its epilogue: single-reader pointwise layers
                following = read_by.get(tail.get_output(0).name, [])
                if len(following) != 1 or following[0].type not in {kinds[k] for k in _EPILOGUE}:
                    break
                tail = following[0]
                near.add(tail.name)
        outputs = [layer.get_output(o) for o in range(layer.num_outputs)]
        if any(r.type == kinds["QUANTIZE"] for t in outputs for r in readers(t)):
            near.add(layer.name)
    return near


def constrain_fp16_layers(trt, network, config, strongly_typed: bool) -> int:
    """tensorrt.int8_float: fp16_layers. In a weakly typed int8 build of the fp32 graph, every
    float layer that the int8 layers do not fuse with (int8_neighbourhood) is constrained to
    fp16: post-processing and Myelin regions, which TensorRT 8.6 may otherwise keep in the
    graph's fp32 (Mask R-CNN's RPN box arithmetic: 1.48 ms against 0.85 ms in fp16). Layers a
    patch pass marked fp32 and those writing the network's outputs are left alone."""
    if strongly_typed:
        return 0
    near = int8_neighbourhood(trt, network)
    skipped = {getattr(trt.LayerType, name, None) for name in _NOT_ARITHMETIC}
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}

    def free(layer) -> bool:  # float arithmetic no Q/DQ pair fuses with, writing no output
        writes = {layer.get_output(o).name for o in range(layer.num_outputs)}
        return (layer.type not in skipped and layer.name not in near
                and FP32_LAYER_MARK not in layer.name and _floats_read(trt, layer)
                and not writes & outputs)

    return _constrain(trt, config, [layer for layer in _layers(network) if free(layer)],
                      trt.float16)
