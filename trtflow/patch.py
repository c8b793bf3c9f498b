"""Patch stage: named onnx-graphsurgeon passes, each reporting what it changed."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping

from .errors import TrtflowError
from .io import atomic_path, write_json

log = logging.getLogger(__name__)

# Backends whose parsers want int32 graph inputs: TensorRT before 10 has no int64 I/O, and an
# int64 array handed to an int32 binding silently gives wrong results.
INT32_INPUT_BACKENDS = {"tensorrt"}


@dataclass
class PatchContext:
    model: str
    backend: str
    options: Mapping[str, Any]
    backend_version: str = ""


def _count(graph) -> Dict[str, int]:
    return {"nodes": len(graph.nodes), "tensors": len(graph.tensors())}


def fold_constants(graph, ctx: PatchContext) -> Dict[str, Any]:
    before = _count(graph)
    graph.fold_constants(error_ok=False).cleanup()
    return {"before": before, "after": _count(graph)}


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

    policy = ctx.options.get("int64_inputs_to_int32", "auto")
    wanted = policy == "always" or (policy == "auto" and ctx.backend in INT32_INPUT_BACKENDS)
    if not wanted:
        return {"skipped": f"policy '{policy}' for backend '{ctx.backend}'", "converted": []}
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

    policy = ctx.options.get("decompose_layernorm", "auto")
    old_trt = ctx.backend == "tensorrt" and _version_tuple(ctx.backend_version) < (8, 6)
    if policy == "never" or (policy == "auto" and not old_trt):
        return {"skipped": f"policy '{policy}' for {ctx.backend} {ctx.backend_version}".strip(),
                "decomposed": 0}
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


def infer_shapes(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Marker pass: shapes are inferred on the ModelProto in `apply_passes` (needs onnx)."""
    return {}


PASSES: Dict[str, Callable[[Any, PatchContext], Dict[str, Any]]] = {
    "fold_constants": fold_constants,
    "cleanup": cleanup,
    "toposort": toposort,
    "int64_inputs_to_int32": int64_inputs_to_int32,
    "decompose_layernorm": decompose_layernorm,
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

    original = onnx.load(str(source))
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
