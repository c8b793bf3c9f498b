"""Graph surgery helpers shared by the patch passes (trtflow.patch, trtflow.roi_pooling) and the
precision stage: a pass's context, following a tensor up through its producers, adding nodes
under one name prefix, shape inference that keeps the source's IR version."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional

# IR version for graphs that do not say: torch.onnx writes 8 to 10, which every backend reads
DEFAULT_IR_VERSION = 10


@dataclass
class PatchContext:
    model: str
    backend: str
    options: Mapping[str, Any]
    backend_version: str = ""


def skipped_by_policy(ctx: PatchContext, option: str, on_auto: bool,
                      default: str = "auto") -> Optional[str]:
    """Why a pass whose policy is auto | always | never does not run here, or None where it
    does: auto runs it where `on_auto` holds (the pass's rule of backend and version)."""
    policy = ctx.options.get(option, default)
    if policy == "always" or (policy == "auto" and on_auto):
        return None
    version = f" {ctx.backend_version}" if ctx.backend_version else ""
    return f"policy '{policy}' for backend '{ctx.backend}'{version}"


@contextlib.contextmanager
def stamped_ir_version(version: int) -> Iterator[None]:
    """onnx.helper.make_model stamps every model it makes with onnx.IR_VERSION. graphsurgeon's
    folding makes models for ONNX Runtime to evaluate, and an onnx newer than ONNX Runtime stamps
    an IR version that runtime refuses ("Unsupported model IR version"): stamp the source's."""
    import onnx

    saved = onnx.IR_VERSION
    onnx.IR_VERSION = min(saved, version)
    try:
        yield
    finally:
        onnx.IR_VERSION = saved


def inferred_dims(graph) -> Dict[str, List[Any]]:
    """Every tensor's dims as ONNX shape inference knows them (None where symbolic)."""
    import onnx
    import onnx_graphsurgeon as gs

    with stamped_ir_version(graph.ir_version or DEFAULT_IR_VERSION):
        proto = onnx.shape_inference.infer_shapes(gs.export_onnx(graph))
    infos = list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)
    return {info.name: [d.dim_value if d.HasField("dim_value") else None
                        for d in info.type.tensor_type.shape.dim] for info in infos}


def producer(tensor, *ops: str):
    """The node making `tensor` when it is one of `ops`, else None."""
    node = tensor.inputs[0] if getattr(tensor, "inputs", None) else None
    return node if node is not None and node.op in ops else None


def through(tensor, *ops: str):
    """`tensor` followed up through single-input-data nodes of `ops` (Cast, Unsqueeze, Slice)."""
    passed = chain(tensor, *ops)
    return passed[-1].inputs[0] if passed else tensor


def chain(tensor, *ops: str) -> List[Any]:
    """The nodes `through` passes, nearest first."""
    nodes = []
    node = producer(tensor, *ops)
    while node is not None:
        nodes.append(node)
        node = producer(node.inputs[0], *ops)
    return nodes


class NodeMaker:
    """Adds nodes to a graph under one name prefix, returning each node's (last) output."""

    def __init__(self, graph, prefix: str) -> None:
        self.graph, self.prefix, self.count = graph, prefix, 0

    def _name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}/{what}_{self.count}"

    def const(self, value):
        import numpy as np
        import onnx_graphsurgeon as gs

        return gs.Constant(self._name("const"), np.asarray(value))

    def __call__(self, op: str, inputs: List[Any], dtype, outputs: int = 1, output=None, **attrs):
        """The node's last output (of `dtype`), or `output` where given."""
        import onnx_graphsurgeon as gs

        name = self._name(op)
        domain = attrs.pop("domain", None)
        made = [gs.Variable(f"{name}/out{i}") for i in range(outputs - 1)]  # unused ones
        made.append(output if output is not None else gs.Variable(f"{name}/out", dtype=dtype))
        self.graph.nodes.append(gs.Node(op, name, attrs=attrs, inputs=list(inputs), outputs=made,
                                        domain=domain))
        return made[-1]

    def unsqueeze(self, tensor, axis: int):
        import numpy as np

        return self("Unsqueeze", [tensor, self.const(np.array([axis], np.int64))], tensor.dtype)


def constant_value(tensor) -> Optional[Any]:
    """The numpy value of a graphsurgeon Constant, or of a Constant node's output; None for any
    other tensor."""
    import onnx_graphsurgeon as gs

    if isinstance(tensor, gs.Constant):
        return tensor.values
    node = producer(tensor, "Constant")
    if node is not None and "value" in node.attrs:
        value = node.attrs["value"]
        return value.values if isinstance(value, gs.Constant) else value
    return None


def version_tuple(version: str) -> tuple:
    """(major, minor) of a backend version string ("8.6.0" -> (8, 6)); () where there is none."""
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) if version else ()
