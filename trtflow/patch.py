"""Patch stage: named onnx-graphsurgeon passes, each reporting what it changed."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping

from .errors import TrtflowError
from .graph_surgery import (DEFAULT_IR_VERSION, PatchContext, inferred_dims, skipped_by_policy,
                            stamped_ir_version, version_tuple)
from .io import atomic_path, load_onnx, write_json
from .known_dims import known_dims
from .nms import nms_passes
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


def decompose_layernorm(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Replace LayerNormalization (opset 17) by the ops it is made of.

    TensorRT before 8.6 has no LayerNormalization importer ("Plugin not found" on RT-DETR
    exports at opset 17); policy auto decomposes only for those versions."""
    import numpy as np
    import onnx_graphsurgeon as gs

    old_trt = ctx.backend == "tensorrt" and version_tuple(ctx.backend_version) < (8, 6)
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


def infer_shapes(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Marker pass: shapes are inferred on the ModelProto in `apply_passes` (needs onnx)."""
    return {}


PASSES: Dict[str, Callable[[Any, PatchContext], Dict[str, Any]]] = {
    "fold_constants": fold_constants,
    "fold_known_dims": fold_known_dims,
    "guard_empty_topk": guard_empty_topk,
    **nms_passes(),
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
