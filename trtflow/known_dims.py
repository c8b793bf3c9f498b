"""What a graph's tensor dims are, beyond ONNX shape inference: dims read through the Shape,
Gather, Concat, Reshape and element-wise arithmetic that exporters write for sizes (an FPN's
upsampling targets, a detector's per-level counts), where shape inference gives up."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from .graph_surgery import inferred_dims


def known_dims(graph) -> Dict[str, List[Any]]:
    """Every tensor's dims as far as shape inference and the shape arithmetic tell them (None
    where still unknown)."""
    return refined_dims(graph, inferred_dims(graph))


# ops whose output has the shape of their (broadcast) inputs
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less",
                "Greater", "And", "Or", "Sigmoid", "Exp", "Log", "Relu", "Clip", "Cast", "Neg",
                "Sqrt", "Abs", "Floor", "Ceil", "Round", "Tanh", "Erf", "Not", "Identity", "Softmax"}


def constant_ints(tensor) -> Optional[List[int]]:
    import onnx_graphsurgeon as gs

    if isinstance(tensor, gs.Constant) and tensor.values.dtype.kind in "iu":
        return [int(v) for v in tensor.values.reshape(-1)]
    return None


def _broadcast(shapes: List[List[Any]]) -> Optional[List[Any]]:
    """numpy broadcasting of partly known dims: a known dim other than 1 is the output's."""
    if any(shape is None for shape in shapes):
        return None
    rank = max(len(shape) for shape in shapes)
    out: List[Any] = []
    for axis in range(rank):
        column = [shape[axis - rank + len(shape)] for shape in shapes if axis - rank + len(shape) >= 0]
        known = [d for d in column if d is not None and d != 1]
        out.append(known[0] if known else (1 if all(d == 1 for d in column) else None))
    return out


def refined_dims(graph, dims: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
    """Dims ONNX shape inference leaves unknown, filled in where the graph says them.

    Shape inference gives up on a Reshape whose shape is computed, even when that shape is a
    Concat of a batch size read with Shape and constants (a detection head's reshape to
    N x -1 x 4), and everything downstream loses the 4: the box decoding's Slices, its
    arithmetic, the Concat and Flatten whose 4 clip_boxes reads back with Shape. This pass
    follows the graph in order, tracking the known elements of shape tensors (Shape, Concat,
    Gather, Unsqueeze, Slice of them) and each tensor's known dims through Reshape, Concat,
    Flatten, Slice, Gather, (Un)squeeze, Transpose and elementwise ops."""
    import onnx_graphsurgeon as gs

    dims = {name: list(shape) for name, shape in dims.items()}
    values: Dict[str, List[Any]] = {}  # 1-D int tensors: known elements (None where unknown)

    def shape_of(tensor) -> Optional[List[Any]]:
        if isinstance(tensor, gs.Constant):
            return list(tensor.values.shape)
        return dims.get(tensor.name)

    def value_of(tensor) -> Optional[List[Any]]:
        constant = constant_ints(tensor)
        return constant if constant is not None else values.get(tensor.name)

    def merge(name: str, shape: Optional[List[Any]]) -> None:
        if shape is None:
            return
        old = dims.get(name)
        if old is None or len(old) != len(shape):
            dims[name] = list(shape)
        else:
            dims[name] = [a if a is not None else b for a, b in zip(old, shape)]

    graph.toposort()
    for node in graph.nodes:
        if not node.outputs:
            continue
        try:
            _refine_node(node, shape_of, value_of, values, merge)
        except (IndexError, ZeroDivisionError):
            # a form this reading does not cover (an axis of a scalar, an index out of range,
            # as in RT-DETR's graph): that node keeps ONNX's dims
            continue
    return dims


def _refine_node(node, shape_of, value_of, values, merge) -> None:
    """One node of refined_dims: its output's known dims (merge) and known elements (values)."""
    out, op = node.outputs[0].name, node.op
    ins = [shape_of(t) for t in node.inputs]
    if op == "Shape" and ins[0] is not None and not node.attrs.get("start") and "end" not in node.attrs:
        values[out] = list(ins[0])
    elif op == "Concat":
        axis = node.attrs.get("axis", 0)
        parts = [value_of(t) for t in node.inputs]
        if axis == 0 and all(part is not None for part in parts):
            values[out] = [v for part in parts for v in part]
        if all(shape is not None for shape in ins) and ins:
            rank = len(ins[0])
            axis %= rank
            merged = []
            for index in range(rank):
                column = [shape[index] for shape in ins if len(shape) == rank]
                if index == axis:
                    merged.append(sum(column) if all(d is not None for d in column) else None)
                else:
                    merged.append(next((d for d in column if d is not None), None))
            merge(out, merged)
    elif op == "Unsqueeze":
        axes = constant_ints(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("axes")
        source = value_of(node.inputs[0])  # a scalar (kept as one element) -> [scalar]
        if source is not None and len(source) == 1:
            values[out] = source
        if ins[0] is not None and axes is not None:
            shape = list(ins[0])
            rank = len(shape) + len(axes)
            for axis in sorted(a % rank for a in axes):
                shape.insert(axis, 1)
            merge(out, shape)
    elif op == "Gather":
        axis = node.attrs.get("axis", 0)
        index = constant_ints(node.inputs[1])
        source = value_of(node.inputs[0])
        if source is not None and index is not None and axis == 0:
            picked = [source[i] if -len(source) <= i < len(source) else None for i in index]
            values[out] = picked
        index_shape = shape_of(node.inputs[1])
        if ins[0] is not None and index_shape is not None:
            axis %= len(ins[0])
            merge(out, ins[0][:axis] + index_shape + ins[0][axis + 1:])
    elif op == "Reshape" and ins[0] is not None:
        target = value_of(node.inputs[1])
        if target is not None:
            shape = [None if v == -1 else (ins[0][i] if v == 0 and i < len(ins[0]) and
                                           not node.attrs.get("allowzero") else v)
                     for i, v in enumerate(target)]
            total = math.prod(d for d in ins[0]) if all(d is not None for d in ins[0]) else None
            rest = [d for d, v in zip(shape, target) if v != -1]
            if -1 in target and total is not None and all(d is not None for d in rest):
                shape[target.index(-1)] = total // max(math.prod(rest), 1)
            merge(out, shape)
    elif op == "Flatten" and ins[0] is not None:
        axis = node.attrs.get("axis", 1) % max(len(ins[0]), 1)
        head, tail = ins[0][:axis], ins[0][axis:]
        merge(out, [math.prod(head) if None not in head else None,
                    math.prod(tail) if None not in tail else None])
    elif op == "Transpose" and ins[0] is not None:
        perm = node.attrs.get("perm") or list(reversed(range(len(ins[0]))))
        merge(out, [ins[0][axis] for axis in perm])
    elif op == "Slice" and ins[0] is not None:
        # the axes not sliced keep their dims even where the bounds are computed
        starts, ends = constant_ints(node.inputs[1]), constant_ints(node.inputs[2])
        axes = constant_ints(node.inputs[3]) if len(node.inputs) > 3 else None
        steps = constant_ints(node.inputs[4]) if len(node.inputs) > 4 else None
        count = len(starts) if starts is not None else len(ends) if ends is not None else None
        if axes is None and count is not None and len(node.inputs) <= 3:
            axes = list(range(count))
        if axes is not None:
            shape = list(ins[0])
            steps = steps if steps is not None else ([1] * len(axes) if len(node.inputs) <= 4 else None)
            for position, axis in enumerate(axes):
                size = shape[axis % len(shape)]
                known = (starts is not None and ends is not None and steps is not None
                         and size is not None)
                shape[axis % len(shape)] = (len(range(*slice(starts[position], ends[position],
                                                             steps[position]).indices(size)))
                                            if known else None)
            merge(out, shape)
            source = value_of(node.inputs[0])
            if (source is not None and axes == [0] and starts is not None and ends is not None
                    and steps is not None):
                values[out] = source[slice(starts[0], ends[0], steps[0])]
    elif op in ("Squeeze",) and ins[0] is not None:
        axes = constant_ints(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("axes")
        if axes is not None:
            drop = {a % len(ins[0]) for a in axes}
            merge(out, [d for i, d in enumerate(ins[0]) if i not in drop])
    elif op in _ELEMENTWISE and len(node.outputs) == 1:
        if op == "Softmax" or len(node.inputs) == 1 or op in ("Cast", "Clip"):
            merge(out, ins[0])
        else:
            merge(out, _broadcast(ins))
