"""Patch stage: named onnx-graphsurgeon passes, each reporting what it changed."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from .errors import TrtflowError
from .graph_surgery import (DEFAULT_IR_VERSION, NodeMaker, PatchContext, chain, inferred_dims,
                            producer, skipped_by_policy, stamped_ir_version, through)
from .io import atomic_path, load_onnx, write_json
from .known_dims import constant_ints, known_dims
from .roi_pooling import roi_pooling_passes

log = logging.getLogger(__name__)

# Backends whose parsers want int32 graph inputs: TensorRT before 10 has no int64 I/O, and an
# int64 array handed to an int32 binding silently gives wrong results.
INT32_INPUT_BACKENDS = {"tensorrt"}


def _count(graph) -> Dict[str, int]:
    return {"nodes": len(graph.nodes), "tensors": len(graph.tensors())}


def fold_constants(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Fold constant subgraphs, shape computations included: at fixed input sizes (static_batch
    detectors) this removes most Shape/Gather/Concat chains the TensorRT parser would otherwise
    have to evaluate."""
    before = _count(graph)
    shape_ops_before = sum(node.op == "Shape" for node in graph.nodes)
    with stamped_ir_version(graph.ir_version or DEFAULT_IR_VERSION):
        graph.fold_constants(error_ok=False).cleanup()
    return {"before": before, "after": _count(graph), "shape_ops_before": shape_ops_before,
            "shape_ops_after": sum(node.op == "Shape" for node in graph.nodes)}


def cleanup(graph, ctx: PatchContext) -> Dict[str, Any]:
    before = _count(graph)
    graph.cleanup(remove_unused_graph_inputs=False)
    return {"before": before, "after": _count(graph)}


def toposort(graph, ctx: PatchContext) -> Dict[str, Any]:
    order_before = [n.name for n in graph.nodes]
    graph.toposort()
    return {"reordered": order_before != [n.name for n in graph.nodes]}


def int64_inputs_to_int32(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Make int64 graph inputs int32 and cast back inside the graph, so the rest is unchanged."""
    import numpy as np
    import onnx_graphsurgeon as gs

    skipped = skipped_by_policy(ctx, "int64_inputs_to_int32", ctx.backend in INT32_INPUT_BACKENDS)
    if skipped:
        return {"skipped": skipped, "converted": []}
    converted = []
    for tensor in graph.inputs:
        if tensor.dtype is None or np.dtype(tensor.dtype) != np.int64:
            continue
        wide = gs.Variable(f"{tensor.name}_int64", dtype=np.int64, shape=tensor.shape)
        for consumer in list(tensor.outputs):
            for index, consumed in enumerate(list(consumer.inputs)):
                if consumed is tensor:  # item assignment keeps graphsurgeon's links in sync
                    consumer.inputs[index] = wide
        graph.nodes.append(gs.Node("Cast", name=f"{tensor.name}_to_int64",
                                   attrs={"to": np.int64}, inputs=[tensor], outputs=[wide]))
        tensor.dtype = np.int32
        converted.append(tensor.name)
    graph.toposort()
    return {"converted": converted}


def _version_tuple(version: str) -> tuple:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) if version else ()


def decompose_layernorm(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Replace LayerNormalization (opset 17) by the ops it is made of.

    TensorRT before 8.6 has no LayerNormalization importer ("Plugin not found" on RT-DETR
    exports at opset 17); policy auto decomposes only for those versions."""
    import numpy as np
    import onnx_graphsurgeon as gs

    old_trt = ctx.backend == "tensorrt" and _version_tuple(ctx.backend_version) < (8, 6)
    skipped = skipped_by_policy(ctx, "decompose_layernorm", old_trt)
    if skipped:
        return {"skipped": skipped, "decomposed": 0}
    count = 0
    for node in [n for n in graph.nodes if n.op == "LayerNormalization"]:
        axis = int(node.attrs.get("axis", -1))
        epsilon = float(node.attrs.get("epsilon", 1e-5))
        x, scale = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        y = node.outputs[0]
        rank = len(x.shape) if x.shape is not None else None
        if axis < 0 and rank is None:
            raise ValueError(f"LayerNormalization '{node.name}' needs a known input rank")
        first = axis if axis >= 0 else rank + axis
        axes = list(range(first, rank if rank is not None else first + 1))
        name = node.name or f"layernorm{count}"
        dtype = np.float32 if x.dtype is None else np.dtype(x.dtype).type

        def var(suffix):
            return gs.Variable(f"{name}/{suffix}", dtype=x.dtype)

        mean, centred, squared, variance = var("mean"), var("centred"), var("squared"), var("var")
        shifted, std, normed, scaled = var("var_eps"), var("std"), var("normed"), var("scaled")
        const = lambda suffix, value: gs.Constant(f"{name}/{suffix}", np.array(value, dtype=dtype))  # noqa: E731
        # ReduceMean takes `axes` as an attribute up to opset 17 and as an input from 18
        if graph.opset >= 18:
            axes_input = [gs.Constant(f"{name}/axes", np.array(axes, dtype=np.int64))]
            reduce_attrs: Dict[str, Any] = {"keepdims": 1}
        else:
            axes_input, reduce_attrs = [], {"axes": axes, "keepdims": 1}
        new_nodes = [
            gs.Node("ReduceMean", f"{name}/ReduceMean", attrs=reduce_attrs,
                    inputs=[x] + axes_input, outputs=[mean]),
            gs.Node("Sub", f"{name}/Sub", inputs=[x, mean], outputs=[centred]),
            gs.Node("Mul", f"{name}/Square", inputs=[centred, centred], outputs=[squared]),
            gs.Node("ReduceMean", f"{name}/ReduceVar", attrs=reduce_attrs,
                    inputs=[squared] + axes_input, outputs=[variance]),
            gs.Node("Add", f"{name}/AddEps", inputs=[variance, const("eps", epsilon)],
                    outputs=[shifted]),
            gs.Node("Sqrt", f"{name}/Sqrt", inputs=[shifted], outputs=[std]),
            gs.Node("Div", f"{name}/Div", inputs=[centred, std], outputs=[normed]),
            gs.Node("Mul", f"{name}/Scale", inputs=[normed, scale],
                    outputs=[scaled if bias is not None else y]),
        ]
        if bias is not None:
            new_nodes.append(gs.Node("Add", f"{name}/Bias", inputs=[scaled, bias], outputs=[y]))
        node.outputs.clear()
        node.inputs.clear()
        graph.nodes.extend(new_nodes)
        count += 1
    graph.cleanup().toposort()
    return {"decomposed": count}


def _empty_constant_branch(branch) -> bool:
    """A branch that only returns constant empty tensors (torchvision's `if boxes.numel() == 0:
    return empty` guard)."""
    import numpy as np
    import onnx_graphsurgeon as gs

    def empty(tensor) -> bool:
        if isinstance(tensor, gs.Constant):
            return tensor.values.size == 0
        producers = tensor.inputs
        return (len(producers) == 1 and producers[0].op == "Constant"
                and np.asarray(producers[0].attrs.get("value").values).size == 0)

    return all(node.op == "Constant" for node in branch.nodes) and all(
        empty(out) for out in branch.outputs)


def inline_empty_guards(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Replace an If whose then-branch only returns empty constants by its else-branch.

    torchvision guards each NMS with `if boxes.numel() == 0`, which exports as an If around the
    NonMaxSuppression. TensorRT's If needs both branches to give the same shapes, and ONNX
    Runtime's float16 converter loses outer-scope names inside subgraphs; the else-branch alone
    gives the same empty result for empty input (NMS of no boxes keeps none)."""
    import onnx_graphsurgeon as gs

    inlined = []
    for node in [n for n in graph.nodes if n.op == "If"]:
        then_branch, else_branch = node.attrs["then_branch"], node.attrs["else_branch"]
        if not _empty_constant_branch(then_branch):
            continue
        graph.nodes.extend(else_branch.nodes)
        for outer, inner in zip(list(node.outputs), list(else_branch.outputs)):
            graph.nodes.append(gs.Node("Identity", f"{node.name}/inlined/{outer.name}",
                                       inputs=[inner], outputs=[outer]))
        node.outputs.clear()
        node.inputs.clear()
        inlined.append(node.name)
    graph.cleanup().toposort()
    return {"inlined": inlined, "if_nodes_left": sum(n.op == "If" for n in graph.nodes)}


def fold_known_dims(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Replace Shape(x)[i] by a constant where shape inference knows x's dim i.

    A one-stage detector reshapes each pyramid level's kept boxes to the shape of another tensor
    of them (torchvision's clip_boxes_to_image: N x 2 x 2 -> N x 4, the 4 read from a Shape).
    ONNX Runtime's ReshapeFusion rewrites such a shape as {0, -1} (copy N, infer the rest), which
    has no answer when a level keeps no box (N = 0): the run fails on that image. With the
    known 4 a constant, the shape is {0, 4}, defined for N = 0; TensorRT gets fewer shape ops."""
    import numpy as np
    import onnx_graphsurgeon as gs

    dims = known_dims(graph)
    folded = []
    for node in [n for n in graph.nodes if n.op == "Gather"]:
        source, index = node.inputs
        shape = source.inputs[0] if len(source.inputs) == 1 else None
        if (shape is None or shape.op != "Shape" or shape.attrs.get("start") or "end" in shape.attrs
                or not isinstance(index, gs.Constant) or index.values.size != 1):
            continue
        known = dims.get(shape.inputs[0].name) or []
        position = int(index.values.reshape(-1)[0])
        if not -len(known) <= position < len(known) or known[position] is None:
            continue
        value = gs.Constant(f"{node.outputs[0].name}/known",
                            np.full(index.values.shape, known[position], dtype=np.int64))
        for consumer in list(node.outputs[0].outputs):
            for position_in, tensor in enumerate(list(consumer.inputs)):
                if tensor is node.outputs[0]:
                    consumer.inputs[position_in] = value
        folded.append(f"{node.name}: {shape.inputs[0].name}[{position}] = {known[position]}")
    graph.cleanup().toposort()
    if folded:  # what only depended on those dims is constant now
        fold_constants(graph, ctx)
    return {"folded": len(folded), "examples": folded[:10],
            "shape_ops_left": sum(node.op == "Shape" for node in graph.nodes)}


def guard_empty_topk(graph, ctx: PatchContext) -> Dict[str, Any]:
    """A TopK whose K is computed (how many candidates a pyramid level kept) survives K = 0.

    A one-stage detector takes the top min(1000, n) scores of each level, n those above the
    score threshold: on an image where a level keeps none, K is 0, which TensorRT 8.6 refuses
    at run time (`TopK: K should be larger than zero`). Rewritten as the top max(K, 1) of the
    scores with one -inf appended, then the first K: the same result for every K, 0 included
    (the -inf is never among the top K of n >= K scores)."""
    import numpy as np
    import onnx_graphsurgeon as gs

    dims = inferred_dims(graph)
    guarded = []
    for node in [n for n in graph.nodes if n.op == "TopK"]:
        scores, k = node.inputs[0], node.inputs[1]
        if (isinstance(k, gs.Constant) or len(dims.get(scores.name) or []) != 1
                or not node.attrs.get("largest", 1)):
            continue  # a fixed K, or not a 1-D top-largest: nothing to guard
        name = node.name
        dtype = np.dtype(scores.dtype) if scores.dtype is not None else np.dtype(np.float32)
        padded = gs.Variable(f"{name}/padded", dtype=scores.dtype)
        at_least_one = gs.Variable(f"{name}/k_at_least_1", dtype=np.int64)
        values, indices = gs.Variable(f"{name}/values", dtype=scores.dtype), gs.Variable(
            f"{name}/indices", dtype=np.int64)
        zero = gs.Constant(f"{name}/zero", np.array([0], dtype=np.int64))
        graph.nodes += [
            gs.Node("Concat", f"{name}/pad", attrs={"axis": 0},
                    inputs=[scores, gs.Constant(f"{name}/minus_inf",
                                                np.array([-np.inf], dtype=dtype))],
                    outputs=[padded]),
            gs.Node("Max", f"{name}/k_max", inputs=[k, gs.Constant(
                f"{name}/one", np.array([1], dtype=np.int64))], outputs=[at_least_one]),
            gs.Node("TopK", f"{name}/guarded", attrs=dict(node.attrs),
                    inputs=[padded, at_least_one], outputs=[values, indices]),
            gs.Node("Slice", f"{name}/first_k_values", inputs=[values, zero, k, zero],
                    outputs=[node.outputs[0]]),
            gs.Node("Slice", f"{name}/first_k_indices", inputs=[indices, zero, k, zero],
                    outputs=[node.outputs[1]]),
        ]
        node.outputs.clear()
        node.inputs.clear()
        guarded.append(name)
    graph.cleanup().toposort()
    return {"guarded": guarded}


def _coordinate_trick(node) -> Any:
    """(boxes, scores, class ids) of an NMS that torchvision's batched_nms exported with its
    coordinate trick (every class's boxes moved by class x (max coordinate + 1), then one NMS),
    or None for any other NMS."""
    add = producer(through(node.inputs[0], "Cast", "Unsqueeze"), "Add")
    if add is None:
        return None
    for boxes, moved in (add.inputs, add.inputs[::-1]):
        mul = producer(through(moved, "Unsqueeze", "Slice", "Cast"), "Mul")
        if mul is None:
            continue
        for ids, step in (mul.inputs, mul.inputs[::-1]):
            if producer(step, "Add") is not None:
                return boxes, through(node.inputs[1], "Cast", "Unsqueeze"), through(ids, "Cast")
    return None


def multiclass_nms(graph, ctx: PatchContext) -> Dict[str, Any]:
    """One NMS over classes, as ONNX's NonMaxSuppression does it (per class, in one node).

    torchvision's batched_nms exports every class's candidates as one set of boxes, moved apart
    by class, for one single-class NMS. ONNX Runtime's NMS compares each candidate with every box
    kept so far, and boxes of different classes are all kept: an SSDlite's ~26,000 candidates
    took ~175 of its ~190 ms there (benchmarks/cpu/ssd-postprocess.md). Rewritten as scores per
    class (a candidate scores -1 in the
    other classes, under the 0 threshold), then the selected boxes in descending score, the
    order batched_nms returns. auto: for ONNX Runtime only; TensorRT runs the original."""
    import numpy as np

    skipped = skipped_by_policy(ctx, "multiclass_nms", ctx.backend == "onnxruntime")
    if skipped:
        return {"skipped": skipped, "rewritten": []}
    rewritten = []
    for node in [n for n in graph.nodes if n.op == "NonMaxSuppression"]:
        found = _coordinate_trick(node)
        if found is None:
            continue
        boxes, scores, ids = found
        name = node.name
        make = NodeMaker(graph, name)
        ids64 = make("Cast", [ids], np.int64, to=7)
        # one more class than the largest id; a 0 appended so that no candidate is one class
        top_id = make("ReduceMax", [make("Concat", [ids64, make.const(np.array([0], np.int64))],
                                         np.int64, axis=0)], np.int64, keepdims=0)
        classes = make("Range", [make.const(np.int64(0)), make("Add", [top_id, make.const(np.int64(1))],
                                                                np.int64), make.const(np.int64(1))], np.int64)
        is_class = make("Equal", [make.unsqueeze(ids64, 0), make.unsqueeze(classes, 1)], np.bool_)
        per_class = make("Where", [is_class, make.unsqueeze(scores, 0),
                                   make.const(np.float32(-1.0))], np.float32)
        selected = make("NonMaxSuppression", [make.unsqueeze(boxes, 0), make.unsqueeze(per_class, 0),
                                              *node.inputs[2:4],
                                              make.const(np.array([0.0], np.float32))],
                        np.int64, **node.attrs)
        box_index = make("Gather", [selected, make.const(np.int64(2))], np.int64, axis=1)
        kept_scores = make("Gather", [scores, box_index], np.float32)
        order = make("TopK", [kept_scores, make("Shape", [box_index], np.int64)], np.int64,
                     outputs=2, axis=0, largest=1, sorted=1)
        make("Gather", [selected, order], np.int64, axis=0, output=node.outputs[0])
        node.outputs.clear()
        node.inputs.clear()
        rewritten.append(name)
    graph.cleanup().toposort()
    return {"rewritten": rewritten}


# EfficientNMS is deprecated from TensorRT 10.12 and gone in 11: there the ONNX NonMaxSuppression
# stays, which the parser maps to the native INMSLayer (notes/trt_api.md)
EFFICIENT_NMS_BEFORE = (10, 12)
# the plugin keeps the top 4096 scores of an image for its NMS kernel (efficientNMSInference.cu)
EFFICIENT_NMS_CANDIDATES = 4096
# a batched NMS over this many classes or fewer runs as one plugin image per class: the plugin's
# NMS kernel is one thread block per image, walking its sorted candidates one at a time, so an
# RPN's 5 FPN levels (1000 candidates each) take a fifth of the serial walk of their ~5,000 as
# one image. Each image reads every candidate (scores of other classes below the threshold): a
# box head's 91 classes of up to 1000 x 90 candidates would be copied 91 times, so it stays one.
EFFICIENT_NMS_CLASS_IMAGES_MAX = 16
# TensorRT 8.6's TopK takes K up to 3840 (ITopKLayer): the per-class rows are ranked by one
EFFICIENT_NMS_TOPK_MAX = 3840
# the plugin's threshold where the NMS has none, and a score under it: a candidate of another
# class in a per-class image
EFFICIENT_NMS_NO_THRESHOLD = -2.0e38
EFFICIENT_NMS_NO_SCORE = -3.0e38
# the per-class images' threshold: their own class's scores are moved to 1 and above, the others' 0
EFFICIENT_NMS_CLASS_THRESHOLD = 0.5
# a node name mark that the TensorRT build reads: such layers run in fp32 in a weakly typed
# (8.x) build. torchvision's class-shifted boxes reach 91 x 1345 = 122,395 in a 1344 Mask R-CNN's
# box head: inf in fp16, which an fp16 build would otherwise be free to pick for the plugin.
FP32_LAYER_MARK = "trtflow_fp32"
# TensorRT's parser takes an op it has no importer for as a plugin of that name, whatever its
# domain; a domain of its own keeps onnx's checker and shape inference from rejecting the node
PLUGIN_DOMAIN = "trt.plugins"


def _kept_count(selected) -> Optional[int]:
    """K where an NMS's selected indices are followed (through Gather/Squeeze/Identity/Cast) by
    a Slice [0:K]: how many boxes the model keeps (torchvision's RPN 1000, its box head 100)."""
    frontier = [selected]
    while frontier:
        tensor = frontier.pop()
        for node in tensor.outputs:
            if node.op == "Slice":
                starts, ends = (constant_ints(t) for t in node.inputs[1:3])
                if starts == [0] and ends and 0 < ends[0] < 2 ** 31 - 1:
                    return int(ends[0])
            elif node.op in ("Gather", "Squeeze", "Identity", "Cast", "Reshape", "Unsqueeze"):
                frontier.extend(node.outputs)
    return None


def _class_shift_nodes(node) -> List[Any]:
    """The nodes of torchvision's class shift before `node` (an NMS): the Add of the boxes and
    the offsets, the offsets' Mul and the max-coordinate arithmetic; [] for any other NMS."""
    add = producer(through(node.inputs[0], "Cast", "Unsqueeze"), "Add")
    if add is None or _coordinate_trick(node) is None:
        return []
    found = [add] + chain(node.inputs[0], "Cast", "Unsqueeze") + chain(node.inputs[1], "Cast",
                                                                          "Unsqueeze")
    frontier = [t for t in add.inputs]
    while frontier:
        tensor = frontier.pop()
        made = producer(tensor, "Mul", "Add", "ReduceMax", "Cast", "Unsqueeze", "Slice")
        if made is not None and made not in found and len(found) < 12:
            found.append(made)
            frontier.extend(made.inputs)
    return found


# ops whose output holds some of their first input's elements and no new value
_MOVING_OPS = {"Gather", "GatherElements", "Reshape", "Expand", "Flatten", "Squeeze", "Unsqueeze",
               "Split", "Slice", "Cast", "Identity", "Transpose", "Tile"}


def _scalar_int(tensor, dims: Mapping[str, List[Any]]) -> Optional[int]:
    """The value of a one-element int tensor where the graph fixes it: a constant, or a dim read
    with Shape -> Gather that shape inference knows (a Range's limit of 91 classes)."""
    constant = constant_ints(tensor)
    if constant is not None:
        return constant[0] if len(constant) == 1 else None
    node = tensor.inputs[0] if getattr(tensor, "inputs", None) else None
    if node is None:
        return None
    if node.op in ("Cast", "Squeeze", "Unsqueeze", "Reshape", "Identity"):
        return _scalar_int(node.inputs[0], dims)
    if node.op == "Gather" and producer(node.inputs[0], "Shape") is not None:
        index = constant_ints(node.inputs[1])
        shape = dims.get(producer(node.inputs[0], "Shape").inputs[0].name)
        if index is not None and len(index) == 1 and shape and -len(shape) <= index[0] < len(shape):
            return shape[index[0]]
    return None


def _largest_of(values) -> Optional[int]:
    """The largest of non-negative integer `values` (a constant's), else None."""
    if values is None or values.dtype.kind not in "iu" or values.size == 0 or values.min() < 0:
        return None
    return int(values.max())


def _largest_id(tensor, dims: Mapping[str, List[Any]], depth: int = 0) -> Optional[int]:
    """An upper bound of a tensor of non-negative integer ids where the graph says where they
    come from (an RPN's level ids: ConstantOfShape per level, concatenated and gathered; a box
    head's labels: a Range to the class count), else None."""
    import onnx_graphsurgeon as gs

    if depth > 40:
        return None
    if isinstance(tensor, gs.Constant):
        return _largest_of(tensor.values)
    node = tensor.inputs[0] if getattr(tensor, "inputs", None) else None
    if node is None:
        return None
    if node.op == "ConstantOfShape":
        return _largest_of(getattr(node.attrs.get("value"), "values", None))
    if node.op == "Range":
        start, limit, delta = (_scalar_int(t, dims) for t in node.inputs[:3])
        if start is None or limit is None or delta is None or start < 0 or delta <= 0:
            return None
        return max(start, limit - 1)
    if node.op == "Concat":
        bounds = [_largest_id(t, dims, depth + 1) for t in node.inputs]
        return None if None in bounds else max(bounds)
    if node.op in _MOVING_OPS:
        return _largest_id(node.inputs[0], dims, depth + 1)
    return None


def _single_class(scores, dims: Mapping[str, List[Any]]) -> bool:
    """Scores of one class ([B, 1, N]), as the graph or shape inference knows them."""
    shape = list(getattr(scores, "shape", None) or dims.get(scores.name) or [])
    return len(shape) == 3 and shape[1] == 1


def efficient_nms(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Single-class ONNX NonMaxSuppression -> TensorRT's EfficientNMS_ONNX_TRT plugin.

    TensorRT 8.6 runs the ONNX op as its INMSLayer: 10.0 of a 1344 Mask R-CNN fp16 engine's
    20.8 ms went to its RPN NMS (~4,700 boxes; benchmarks/gpu/detectors.md). The plugin takes the
    same boxes (scores transposed to [B, N, 1]) and writes the same selected indices, highest
    score first, into [B x K, 3] rows padded with the last one; the valid rows are taken back
    out, so what follows is unchanged. torchvision's batched NMS is single-class (its class-shifted
    boxes). Where its class ids come from a graph that bounds them to a few (an RPN's FPN levels),
    each class is an image of its own (`_per_class_images`): the plugin walks the images'
    candidates in parallel. Differences, recorded per node: K (max_output_boxes_per_class) is the
    count the model keeps after it (the Slice [0:K] that follows), and the plugin's NMS sees an
    image's top 4096 scores only. auto: TensorRT before 10.12; off unless asked
    (config/schema.yaml says why)."""
    import numpy as np

    version = _version_tuple(ctx.backend_version) if ctx.backend_version else ()
    before_deprecation = not version or version[:2] < EFFICIENT_NMS_BEFORE
    skipped = skipped_by_policy(ctx, "efficient_nms", ctx.backend == "tensorrt" and before_deprecation,
                                default="never")
    if skipped:
        return {"skipped": skipped, "rewritten": [], "left": []}
    rewritten, left = [], []
    nms_nodes = [n for n in graph.nodes if n.op == "NonMaxSuppression"]
    dims = inferred_dims(graph) if nms_nodes else {}
    for node in nms_nodes:
        scores = node.inputs[1]
        limit = constant_ints(node.inputs[2]) if len(node.inputs) > 2 else None
        iou = node.inputs[3] if len(node.inputs) > 3 else None
        iou_value = getattr(iou, "values", None) if iou is not None else 0.0
        threshold = node.inputs[4] if len(node.inputs) > 4 else None
        threshold_value = getattr(threshold, "values", None) if threshold is not None else None
        if not _single_class(scores, dims) or iou_value is None or (
                threshold is not None and threshold_value is None):
            left.append({"node": node.name, "why": "scores not [B, 1, N], or thresholds not constant"})
            continue
        kept = _kept_count(node.outputs[0])
        k = min(v for v in (kept, (limit or [None])[0], EFFICIENT_NMS_CANDIDATES) if v)
        attrs = dict(plugin_version="1", plugin_namespace="", max_output_boxes_per_class=int(k),
                     iou_threshold=float(np.asarray(iou_value).reshape(-1)[0]),
                     score_threshold=float(np.asarray(threshold_value).reshape(-1)[0])
                     if threshold_value is not None else EFFICIENT_NMS_NO_THRESHOLD,
                     center_point_box=int(node.attrs.get("center_point_box", 0)))
        found = _coordinate_trick(node)
        largest = _largest_id(found[2], dims) if found is not None else None
        class_images = largest + 1 if largest is not None and \
            1 <= largest < EFFICIENT_NMS_CLASS_IMAGES_MAX and k <= EFFICIENT_NMS_TOPK_MAX else None
        make = NodeMaker(graph, f"{node.name}/{FP32_LAYER_MARK}")
        if class_images is not None:
            _per_class_images(make, found, class_images, attrs, node.outputs[0])
        else:
            for shifting in _class_shift_nodes(node):  # fp32 too: 122,395 is inf in fp16
                shifting.name = f"{shifting.name}/{FP32_LAYER_MARK}"
            _one_image(make, node.inputs[0], scores, attrs, node.outputs[0])
        node.outputs.clear()
        node.inputs.clear()
        rewritten.append({"node": node.name, "max_output_boxes": int(k), "kept_after": kept,
                          "candidates_limit": EFFICIENT_NMS_CANDIDATES, "class_images": class_images})
    if rewritten:
        graph.import_domains = _with_domain(graph.import_domains, PLUGIN_DOMAIN)
    graph.cleanup().toposort()
    return {"rewritten": rewritten, "left": left}


def _valid_rows(make: NodeMaker, rows):
    """(box index, valid) of the plugin's [R, 3] rows. The plugin writes the kept rows first and
    fills the rest with copies of the last kept row (efficientNMSInference.cu PadONNXResult), or
    -1 where none is kept; a box is kept once, so a row is valid if its box is >= 0 and not the
    row before's."""
    import numpy as np

    box_index = make("Gather", [rows, make.const(np.int64(2))], np.int32, axis=1)
    before = make("Concat", [make.const(np.array([-1], np.int32)), make(
        "Slice", [box_index, make.const(np.array([0], np.int64)), make.const(np.array([-1], np.int64)),
                  make.const(np.array([0], np.int64))], np.int32)], np.int32, axis=0)
    valid = make("And", [make("GreaterOrEqual", [box_index, make.const(np.int32(0))], np.bool_),
                         make("Not", [make("Equal", [box_index, before], np.bool_)], np.bool_)],
                 np.bool_)
    return box_index, valid


def _where_true(make: NodeMaker, mask):
    """The positions where a 1-D bool tensor is true. By NonZero (INonZeroLayer, a data-dependent
    shape TensorRT 8.6 plans): a Slice ending at a count summed from the rows has no
    implementation in 8.6's Myelin ("Could not find any implementation for node
    {ForeignNode[...]}", benchmarks/gpu/detectors.md)."""
    import numpy as np

    return make("Squeeze", [make("NonZero", [mask], np.int64), make.const(np.array([0], np.int64))],
                np.int64)


def _one_image(make: NodeMaker, boxes, scores, attrs: Mapping[str, Any], output) -> None:
    """The NMS as one plugin image: its own (class-shifted) boxes, scores [B, N, 1]; the valid
    rows come first, highest score first."""
    import numpy as np

    scores_bn1 = make("Transpose", [scores], scores.dtype, perm=[0, 2, 1])
    rows = make("EfficientNMS_ONNX_TRT", [boxes, scores_bn1], np.int32, domain=PLUGIN_DOMAIN,
                **attrs)
    _, valid = _valid_rows(make, rows)
    cut = make("Gather", [rows, _where_true(make, valid)], np.int32, axis=0)
    make("Cast", [cut], np.int64, to=7, output=output)


def _per_class_images(make: NodeMaker, found, classes: int, attrs: Mapping[str, Any],
                      output) -> None:
    """torchvision's batched NMS as one plugin image per class: image c reads every candidate's
    own (unshifted) box and its score where its class is c, a score under the threshold where
    not; the images' kept rows (interleaved: the plugin's blocks write through one atomic
    counter) are ranked by score, and the first K are the batched NMS's first K, since a box
    kept in its class is among its class's first K."""
    import numpy as np

    boxes, scores, ids = found  # [N, 4], [N], [N]
    k = int(attrs["max_output_boxes_per_class"])
    member = make("Equal", [make.unsqueeze(make("Cast", [ids], np.int64, to=7), 0),
                            make.const(np.arange(classes, dtype=np.int64).reshape(classes, 1))],
                  np.bool_)
    if attrs["score_threshold"] > EFFICIENT_NMS_NO_THRESHOLD:
        member = make("And", [member, make.unsqueeze(make("GreaterOrEqual", [
            scores, make.const(np.float32(attrs["score_threshold"]))], np.bool_), 0)], np.bool_)
    # Under a threshold below 0.007 the plugin takes every score as a candidate
    # (EfficientNMSDenseIndex: those under it score -32768 and are still kept, up to K), so the
    # images' scores are put at 1 and above (the scores moved up by 1 less their minimum when
    # that is negative: an RPN's probabilities by 1 exactly), other classes' at 0, and the
    # plugin's threshold is 0.5: it walks its own class's candidates only (EfficientNMSFilter)
    lowest = make("ReduceMin", [make("Concat", [scores, make.const(np.array([0.0], np.float32))],
                                     np.float32, axis=0)], np.float32, keepdims=0)
    moved = make("Sub", [make("Add", [scores, make.const(np.float32(1.0))], np.float32), lowest],
                 np.float32)
    class_scores = make("Where", [member, make.unsqueeze(moved, 0), make.const(np.float32(0.0))],
                        np.float32)
    class_boxes = make("Expand", [make.unsqueeze(boxes, 0),
                                  make.const(np.array([classes, 1, 1], np.int64))], np.float32)
    rows = make("EfficientNMS_ONNX_TRT", [class_boxes, make.unsqueeze(class_scores, 2)], np.int32,
                domain=PLUGIN_DOMAIN, **{**attrs, "score_threshold": EFFICIENT_NMS_CLASS_THRESHOLD})
    box_index, valid = _valid_rows(make, rows)
    # a -1 row reads the score put in front: no index out of range, with no candidate too
    no_score = make.const(np.array([EFFICIENT_NMS_NO_SCORE], np.float32))
    row_scores = make("Where", [valid, make("Gather", [
        make("Concat", [no_score, scores], np.float32, axis=0),
        make("Add", [box_index, make.const(np.int32(1))], np.int32)], np.float32), no_score],
        np.float32)
    ranked = make("TopK", [row_scores, make.const(np.array([k], np.int64))], np.int64, outputs=2,
                  axis=0, largest=1, sorted=1)
    chosen = make("Gather", [ranked, _where_true(make, make("Gather", [valid, ranked], np.bool_))],
                  np.int64)
    # rows (0, 0, box) as the single-class NMS it stands for writes them
    kept = make("Gather", [box_index, chosen], np.int32)
    zeros = make("Mul", [kept, make.const(np.int32(0))], np.int32)
    triples = make("Concat", [make.unsqueeze(zeros, 1), make.unsqueeze(zeros, 1),
                              make.unsqueeze(kept, 1)], np.int32, axis=1)
    make("Cast", [triples], np.int64, to=7, output=output)


def _with_domain(domains, name: str):
    import onnx

    domains = list(domains or [])
    if not any(d.domain == name for d in domains):
        domains.append(onnx.helper.make_opsetid(name, 1))
    return domains


def onnxruntime_runnable(model_proto):
    """`model_proto` with each EfficientNMS_ONNX_TRT node as the standard ops it stands for
    (ONNX NonMaxSuppression, its rows padded to the plugin's [K, 3] as the plugin pads them), for
    ONNX Runtime:
    the int8 calibration of a TensorRT graph, and the tests. Tensor names are kept, so ranges
    measured here are those of the TensorRT graph's tensors."""
    import numpy as np
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model_proto)
    plugins = [n for n in graph.nodes if n.op == "EfficientNMS_ONNX_TRT"]
    for node in plugins:
        boxes, scores_bn1 = node.inputs
        make = NodeMaker(graph, f"{node.name}/as_onnx")
        k = int(node.attrs["max_output_boxes_per_class"])
        scores = make("Transpose", [scores_bn1], np.float32, perm=[0, 2, 1])
        selected = make("NonMaxSuppression", [
            boxes, scores, make.const(np.array([k], np.int64)),
            make.const(np.array([node.attrs["iou_threshold"]], np.float32)),
            make.const(np.array([node.attrs["score_threshold"]], np.float32))],
            np.int64, center_point_box=int(node.attrs.get("center_point_box", 0)))
        # ONNX's order is by box index within a class for equal scores; both sort by score
        # (over all images: one order the plugin's blocks may write theirs in)
        shape = make("Shape", [scores], np.int64)  # [B, C, N]
        class_count, box_count = (make("Gather", [shape, make.const(np.int64(axis))], np.int64)
                                  for axis in (1, 2))
        column = [make("Gather", [selected, make.const(np.int64(i))], np.int64, axis=1)
                  for i in range(3)]  # (image, class, box)
        flat_index = make("Add", [make("Mul", [make("Add", [make("Mul", [
            column[0], class_count], np.int64), column[1]], np.int64), box_count], np.int64), column[2]],
            np.int64)
        box_scores = make("Gather", [make("Reshape", [scores, make.const(np.array([-1], np.int64))],
                                          np.float32), flat_index], np.float32)
        order = make("TopK", [box_scores, make("Shape", [box_scores], np.int64)], np.int64,
                     outputs=2, axis=0, largest=1, sorted=1)
        ranked = make("Gather", [selected, order], np.int64, axis=0)
        # padded as the plugin pads (efficientNMSInference.cu, PadONNXResult): with copies of
        # the last valid row, or -1 rows where there is none, to B x K rows
        images = make("Shape", [boxes], np.int64, start=0, end=1)
        missing = make("Sub", [make("Mul", [images, make.const(np.array([k], np.int64))], np.int64),
                               make("Shape", [ranked], np.int64, start=0, end=1)], np.int64)
        with_none = make("Concat", [make.const(np.full((1, 3), -1, np.int64)), ranked], np.int64, axis=0)
        last = make("Gather", [with_none, make("Shape", [ranked], np.int64, start=0, end=1)],
                    np.int64, axis=0)
        fill = make("Expand", [last, make("Concat", [missing, make.const(np.array([3], np.int64))],
                                          np.int64, axis=0)], np.int64)
        padded = make("Concat", [ranked, fill], np.int64, axis=0)
        make("Cast", [padded], np.int32, to=6, output=node.outputs[0])
        node.outputs.clear()
        node.inputs.clear()
    graph.cleanup().toposort()
    runnable = gs.export_onnx(graph)
    del runnable.opset_import[:]
    runnable.opset_import.extend(d for d in model_proto.opset_import if d.domain != PLUGIN_DOMAIN)
    return runnable


def has_plugins(model_proto) -> bool:
    return any(node.domain == PLUGIN_DOMAIN for node in model_proto.graph.node)


def infer_shapes(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Marker pass: shapes are inferred on the ModelProto in `apply_passes` (needs onnx)."""
    return {}


PASSES: Dict[str, Callable[[Any, PatchContext], Dict[str, Any]]] = {
    "fold_constants": fold_constants,
    "fold_known_dims": fold_known_dims,
    "guard_empty_topk": guard_empty_topk,
    "multiclass_nms": multiclass_nms,
    "efficient_nms": efficient_nms,
    "cleanup": cleanup,
    "toposort": toposort,
    "int64_inputs_to_int32": int64_inputs_to_int32,
    "decompose_layernorm": decompose_layernorm,
    "inline_empty_guards": inline_empty_guards,
    **roi_pooling_passes(),
    "infer_shapes": infer_shapes,
}


def apply_passes(model_proto, passes: List[str], ctx: PatchContext):
    """Run the named passes in order; return the patched ModelProto and one report per pass."""
    import onnx
    import onnx_graphsurgeon as gs

    reports = []
    graph = gs.import_onnx(model_proto)
    for name in passes:
        if name not in PASSES:
            raise TrtflowError(f"unknown patch pass '{name}'", model=ctx.model,
                               fix=f"use passes from {sorted(PASSES)}")
        log.info("patch %s: %s", ctx.model, name)
        if name == "infer_shapes":
            proto = gs.export_onnx(graph)
            known = len(proto.graph.value_info)
            proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
            details = {"value_info_before": known, "value_info_after": len(proto.graph.value_info)}
            graph = gs.import_onnx(proto)
        else:
            try:
                details = PASSES[name](graph, ctx)
            except Exception as exc:
                raise TrtflowError(f"patch pass '{name}' failed: {exc}", model=ctx.model,
                                   fix=f"remove '{name}' from patch.passes for this model, or "
                                       "report the graph that breaks it") from exc
        reports.append({"pass": name, **details})
    return gs.export_onnx(graph), reports


def patch_onnx(model: str, source: Path, output: Path, report_path: Path, backend: str,
               options: Mapping[str, Any], backend_version: str = "") -> Dict[str, Any]:
    import onnx

    original = load_onnx(source)
    ctx = PatchContext(model=model, backend=backend, options=options,
                       backend_version=backend_version)
    patched, reports = apply_passes(original, list(options["passes"]), ctx)
    with atomic_path(output) as tmp:
        onnx.checker.check_model(patched)
        onnx.save(patched, str(tmp))
    report = {"model": model, "backend": backend, "nodes_before": len(original.graph.node),
              "nodes_after": len(patched.graph.node), "passes": reports}
    write_json(report_path, report)
    return report
