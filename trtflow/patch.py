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


def infer_shapes(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Marker pass: shapes are inferred on the ModelProto in `apply_passes` (needs onnx)."""
    return {}


PASSES: Dict[str, Callable[[Any, PatchContext], Dict[str, Any]]] = {
    "fold_constants": fold_constants,
    "cleanup": cleanup,
    "toposort": toposort,
    "int64_inputs_to_int32": int64_inputs_to_int32,
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
               options: Mapping[str, Any]) -> Dict[str, Any]:
    import onnx

    original = onnx.load(str(source))
    ctx = PatchContext(model=model, backend=backend, options=options)
    patched, reports = apply_passes(original, list(options["passes"]), ctx)
    with atomic_path(output) as tmp:
        onnx.checker.check_model(patched)
        onnx.save(patched, str(tmp))
    report = {"model": model, "backend": backend, "nodes_before": len(original.graph.node),
              "nodes_after": len(patched.graph.node), "passes": reports}
    write_json(report_path, report)
    return report
