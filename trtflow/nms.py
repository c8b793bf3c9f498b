"""Patch passes for torchvision's NMS: one NMS per class for ONNX Runtime (multiclass_nms), and
TensorRT's EfficientNMS_ONNX_TRT plugin in its place for TensorRT before 10.12 (efficient_nms),
with the plugin's standard-op form for ONNX Runtime (onnxruntime_runnable: int8 calibration and
the tests)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from .graph_surgery import (NodeMaker, PatchContext, chain, constant_value, inferred_dims,
                            producer, skipped_by_policy, through, version_tuple)
from .known_dims import constant_ints


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


# how torch.where(mask)[0] reaches the Gathers that filter with it: NonZero -> Transpose -> Split
# (or Gather) -> Squeeze
_POSITIONS_PATH = ("Transpose", "Split", "Squeeze", "Reshape", "Flatten", "Cast", "Unsqueeze")
# ops computing each candidate's value from its own row only (or, ReduceMax, the class shift's
# bound: a larger bound moves the classes further apart and keeps the same boxes), through which
# a filtered candidate list is followed into the NMS and its filters' masks
_ROW_OPS = {"Add", "Sub", "Mul", "Div", "Cast", "Unsqueeze", "Squeeze", "Identity", "Clip", "Max",
            "Min", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal", "And", "Or", "Not",
            "Where", "Sigmoid", "Exp", "Log", "ReduceMax"}


def _positions_nonzero(gather) -> Any:
    """The NonZero whose positions (torch.where(mask)[0]) an axis-0 Gather takes, or None."""
    if gather is None or gather.op != "Gather" or gather.attrs.get("axis", 0) != 0:
        return None
    index = gather.inputs[1]
    made = producer(index, *_POSITIONS_PATH)
    while made is not None:
        index = made.inputs[0]
        made = producer(index, *_POSITIONS_PATH)
    nonzero = producer(index, "NonZero")
    if nonzero is not None and gather.inputs[1] is not index:
        return nonzero
    return None


def _filter_gathers(nonzero) -> List[Any]:
    """The axis-0 Gathers that take a NonZero's positions: a filter's family (boxes, scores, ids)."""
    gathers, frontier = [], [nonzero.outputs[0]]
    while frontier:
        for reader in frontier.pop().outputs:
            if reader.op in _POSITIONS_PATH:
                frontier.extend(reader.outputs)
            elif _positions_nonzero(reader) is nonzero and reader not in gathers:
                gathers.append(reader)
    return gathers


# why `_fold_filters` and `_fold_topk_filters` find nothing to fold: the one-stage form is tried
# where the first finds no NonZero filter, and its own reason said only where it found a TopK
NO_NONZERO_FILTER = "no NonZero filter before it"
NOT_TOPK_SCORES = "its scores are not TopK values"


def _filters_into(node) -> List[Any]:
    """The NonZero filters (torch.where(mask)[0] and the Gathers by it) that the candidates of an
    NMS went through: followed up from its boxes and scores through row-wise ops to filter Gathers,
    and from each filter's data to a filter before it (torchvision: remove_small_boxes, the score
    threshold). Nearest the NMS first."""
    found, seen, frontier = [], set(), [t for t in node.inputs[:2]]
    while frontier:
        made = frontier.pop().inputs
        made = made[0] if made else None
        if made is None or id(made) in seen:
            continue
        seen.add(id(made))
        nonzero = _positions_nonzero(made)
        if nonzero is not None:
            if nonzero not in found:
                found.append(nonzero)
            earlier = made.inputs[0].inputs[0] if made.inputs[0].inputs else None
            if _positions_nonzero(earlier) is not None:
                frontier.append(made.inputs[0])
        elif _row_wise(made):
            frontier.extend(t for t in made.inputs if t.inputs)
    return found


# ops that take an NMS's selected indices to the positions Gathers read (its rows' box column,
# the first K)
_INDEX_MOVES = ("Gather", "Slice", "Squeeze", "Unsqueeze", "Identity", "Cast", "Reshape")


def _selected_positions(graph, node, filtered: set) -> Any:
    """The positions (tensor ids) at which the Gathers after an NMS take candidates, and None,
    where its selected indices are read only by such Gathers (`_keep_gathers`) of filtered
    candidates (tensors in `filtered`, by id: boxes[keep]); else why not."""
    gathers, why = _keep_gathers(graph, node)
    strays = [g for g in gathers if id(g.inputs[0]) not in filtered]
    if why is None and strays:
        why = f"{strays[0].name} (Gather) reads the NMS's selected indices"
    return {id(g.inputs[1]) for g in gathers}, why


def _filters_unused_elsewhere(graph, node, nonzeros: List[Any], gathers: List[Any],
                              dims: Mapping[str, List[Any]]) -> Any:
    """None where every reader of the filtered candidates, followed through row-wise ops, ends in
    the NMS, in a filter (its mask or its Gathers) or in a Gather by the NMS's selected indices;
    else what reads them otherwise. Only then do the unfiltered candidates, with the filters'
    masks on the NMS's scores, give the same selection. (why not or None, the tensors passed)."""
    selected, why = _selected_positions(graph, node, {id(g.outputs[0]) for g in gathers})
    if why is not None:
        return why, []
    outputs = {id(t) for t in graph.outputs}
    sinks = {id(node)} | {id(n) for n in nonzeros} | {id(g) for g in gathers}
    frontier, seen, passed = [g.outputs[0] for g in gathers], {}, []
    while frontier:
        tensor = frontier.pop()
        if id(tensor) in seen:
            continue
        seen[id(tensor)] = tensor
        if id(tensor) in outputs:
            return f"{tensor.name} is a graph output", []
        for reader in tensor.outputs:
            if id(reader) in sinks:
                continue
            if reader.op == "Gather" and reader.attrs.get("axis", 0) == 0 and \
                    id(reader.inputs[1]) in selected:
                continue  # boxes[keep]: reads the same candidate, by its unfiltered position
            if not _row_wise(reader):
                return f"{reader.name} ({reader.op}) reads the filtered candidates", []
            passed.append(reader)
            frontier.extend(reader.outputs)
    for reader in passed:  # what they are combined with: the candidates too, or one value
        for tensor in reader.inputs:
            if id(tensor) not in seen and not _one_value(tensor, dims):
                return f"{reader.name} ({reader.op}) combines them with {tensor.name}", []
    return None, list(seen.values())


def _one_value(tensor, dims: Mapping[str, List[Any]]) -> bool:
    """Whether `tensor` holds one value (a constant's, or of a shape the graph knows), which a
    row-wise op applies to every candidate alike, filtered or not."""
    value = constant_value(tensor)
    if value is not None:
        # or the indices, starts or ends of a Gather or Slice along a box's coordinates
        return getattr(value, "size", 1) == 1 or bool(tensor.outputs) and all(
            n.op in ("Gather", "Slice") and tensor is not n.inputs[0] for n in tensor.outputs)
    shape = dims.get(tensor.name)
    return shape is not None and all(isinstance(d, int) and d == 1 for d in shape)


def _row_wise(node) -> bool:
    """Whether `node` computes each candidate's values from that candidate's alone (Slice and
    Gather along later axes: a box's coordinates)."""
    axis = node.attrs.get("axis", 0)
    if node.op == "Gather":
        return axis != 0
    if node.op == "Slice":
        return _row_wise_slice(node)
    return node.op in _ROW_OPS


def _row_wise_slice(node) -> bool:
    """A Slice along later axes only, or one that keeps all of axis 0 (torchvision's
    offsets[:, None] exports as [0:INT64_MAX] along it)."""
    starts, ends = constant_ints(node.inputs[1]), constant_ints(node.inputs[2])
    axes = constant_ints(node.inputs[3]) if len(node.inputs) > 3 else list(range(len(starts or [])))
    steps = constant_ints(node.inputs[4]) if len(node.inputs) > 4 else [1] * len(axes or [])
    if None in (starts, ends, axes, steps):
        return False
    return all(axis != 0 or (start == 0 and end >= 2 ** 31 - 1 and step == 1)
               for start, end, axis, step in zip(starts, ends, axes, steps))


def _one_chain(families: Mapping[int, List[Any]]) -> bool:
    """Whether the filters (NonZero id -> its Gathers) run one after another, as torchvision's
    do: the first's Gathers read no filter's output, each later one's read the one before's
    outputs only. Two filters side by side pair their i-th kept rows, which the unfiltered
    candidates under both masks do not."""
    made_by = {id(g.outputs[0]): key for key, gathers in families.items() for g in gathers}
    before = {}
    for key, gathers in families.items():
        sources = {made_by.get(id(g.inputs[0])) for g in gathers}
        if len(sources) != 1:
            return False
        before[key] = sources.pop()
    firsts = [key for key, source in before.items() if source is None]
    followed = [source for source in before.values() if source is not None]
    # one first, and no filter followed by two: a single path (Gathers make no cycle)
    return len(firsts) == 1 and len(followed) == len(set(followed))


def _fold_filters(graph, node, dims: Mapping[str, List[Any]]) -> Any:
    """An NMS's filters (NonZero positions and the Gathers by them) folded into a mask: every
    reader of a filtered candidate reads the unfiltered one, and the returned mask (the filters'
    masks, all now over the unfiltered candidates, And-ed) says which candidates the NMS may keep;
    its selected indices are then positions among the unfiltered candidates, which the Gathers
    after it (boxes[keep]) now read. (mask, NonZero names), or (None, why not)."""
    nonzeros = _filters_into(node)
    if not nonzeros:
        return None, NO_NONZERO_FILTER
    families = {id(n): _filter_gathers(n) for n in nonzeros}
    if not _one_chain(families):
        return None, "its filters are not one chain (each filtering the one before's candidates)"
    gathers = [g for n in nonzeros for g in families[id(n)]]
    why, passed = _filters_unused_elsewhere(graph, node, nonzeros, gathers, dims)
    if why is not None:
        return None, why
    # in any order: a reader moved onto an earlier filter's output moves on again in its turn
    for gather in gathers:
        filtered, unfiltered = gather.outputs[0], gather.inputs[0]
        for reader in list(filtered.outputs):
            for index, tensor in enumerate(list(reader.inputs)):
                if tensor is filtered:
                    reader.inputs[index] = unfiltered
        gather.outputs.clear()
    for tensor in passed:  # their length is now the unfiltered candidates'
        tensor.shape = None
    return [n.inputs[0] for n in nonzeros], [n.name for n in nonzeros]


# what carries a level's top-k scores into an NMS: torch.cat over the levels, the NMS's [B, 1, N]
_SCORES_PATH = ("Unsqueeze", "Reshape", "Cast", "Identity", "Flatten")


def _topk_filter(topk, dims: Mapping[str, List[Any]]) -> Any:
    """A one-stage detector's score filter before a TopK (torchvision's RetinaNet and FCOS, per
    FPN level): `keep = x > c; x[keep].topk(min(K, keep.sum()))`, the positions then
    `torch.where(keep)[0][idxs]`: the TopK of the scores over the threshold, K cut to how many
    there are. (its parts, None) or (None, why not)."""
    gathered = producer(topk.inputs[0], "GatherND", "Gather")
    if gathered is None:
        return None, "its TopK reads no filtered scores"
    nonzero = producer(through(gathered.inputs[1], "Transpose", "Squeeze", "Reshape"), "NonZero")
    greater = producer(nonzero.inputs[0], "Greater") if nonzero is not None else None
    scores = gathered.inputs[0]
    if greater is None or greater.inputs[0] is not scores or \
            constant_value(greater.inputs[1]) is None:
        return None, "its TopK reads scores filtered otherwise than x[x > c]"
    shape = dims.get(scores.name)
    if shape is not None and len(shape) != 1:
        return None, f"{scores.name}: not 1-D"
    count = shape[0] if shape and isinstance(shape[0], int) else None
    # torch.where(keep)[0]: a NonZero of its own over the same condition
    position_gathers, nonzeros = [], [nonzero]
    for reader in topk.outputs[1].outputs:
        where = producer(through(reader.inputs[0], *_POSITIONS_PATH), "NonZero")
        if reader.op == "Gather" and reader.attrs.get("axis", 0) == 0 and \
                reader.inputs[1] is topk.outputs[1] and where is not None and \
                where.inputs[0] is greater.outputs[0]:
            position_gathers.append(reader)
            nonzeros += [where] if where not in nonzeros else []
    if len(position_gathers) != len(topk.outputs[1].outputs):
        return None, "its TopK's indices are read otherwise than as the kept positions"
    limit = _topk_limit(topk.inputs[1])
    if limit is None:
        return None, "its TopK's K is not min(constant, how many)"
    bound = float(np.asarray(constant_value(greater.inputs[1])).reshape(-1)[0])
    return {"topk": topk, "scores": scores, "over": greater.outputs[0], "bound": bound,
            "k": limit if count is None else min(limit, count), "count": count,
            "position_gathers": position_gathers, "nonzeros": nonzeros}, None


def _topk_limit(k) -> Optional[int]:
    """The constant of torchvision's _topk_min (K = min(constant, a size)): the one constant
    Concat-ed with a Shape's entry on the way to the ReduceMin that makes K."""
    for node in _made_from(k, 6):
        if node.op == "Concat" and len(node.inputs) == 2:
            values = [constant_value(t) for t in node.inputs]
            known = [v for v in values if v is not None]
            if len(known) == 1 and np.asarray(known[0]).size == 1:
                return int(np.asarray(known[0]).reshape(-1)[0])
    return None


def _fold_topk_filters(graph, node, dims: Mapping[str, List[Any]]) -> Any:
    """An NMS whose scores are every FPN level's top-k of the scores over a threshold
    (`_topk_filter`), concatenated: each level's TopK reads all its scores instead, those not
    over the threshold c moved to c - 1 (under every kept one), K a constant min(K, all); the
    positions it picks are the scores' own (what torch.where(keep)[0][idxs] gave); and the
    returned score threshold, between c - 1 and every c, leaves the moved ones out of the NMS.
    The same candidates, in the same order, and after them the left-out ones where a level had
    fewer than K over its threshold. (threshold, [NonZero names]) or (None, why not)."""
    source = through(node.inputs[1], *_SCORES_PATH)
    made = producer(source, "Concat")
    levels = made.inputs if made is not None else [source]
    found = []
    for values in levels:
        topk = producer(values, "TopK")
        if topk is None or topk.outputs[0] is not values:
            return None, NOT_TOPK_SCORES
        parts, why = _topk_filter(topk, dims)
        if parts is None:
            return None, why
        found.append(parts)
    bounds = [f["bound"] for f in found]
    if max(bounds) - min(bounds) >= 1:
        return None, "its levels' thresholds are 1 or more apart"
    make = NodeMaker(graph, f"{node.name}/topk_filters")
    for parts in found:
        topk, scores = parts["topk"], parts["scores"]
        moved = make("Where", [parts["over"], scores, make.const(
            np.asarray(parts["bound"] - 1.0, dtype=np.float32))], np.float32)
        topk.inputs[0] = moved
        topk.inputs[1] = make.const(np.array([parts["k"]], np.int64)) if parts["count"] else \
            _at_most(make, parts["k"], scores)
        for gather in parts["position_gathers"]:  # torch.where(keep)[0][idxs] -> idxs
            for reader in list(gather.outputs[0].outputs):
                for index, tensor in enumerate(list(reader.inputs)):
                    if tensor is gather.outputs[0]:
                        reader.inputs[index] = topk.outputs[1]
            gather.outputs.clear()
    outputs = {id(t) for t in graph.outputs}  # their shapes are the model's, kept
    for tensor in _reached_tensors([p["topk"].outputs[0] for p in found] +
                                   [p["topk"].outputs[1] for p in found]):
        if id(tensor) not in outputs:
            tensor.shape = None  # a level's count is now its K
    return (max(bounds) - 1.0 + min(bounds)) / 2.0, [n.name for p in found for n in p["nonzeros"]]


def _at_most(make: NodeMaker, k: int, scores):
    """[min(k, len(scores))]: a size TensorRT knows when it builds (the scores' length is the
    input's and the model's, not the data's)."""
    length = make("Shape", [scores], np.int64)
    return make("ReduceMin", [make("Concat", [make.const(np.array([k], np.int64)), length],
                                   np.int64, axis=0)], np.int64, keepdims=1)


def _reached_tensors(tensors: List[Any]) -> List[Any]:
    """Every tensor computed from these (themselves excluded)."""
    seen, found, frontier = set(), [], list(tensors)
    while frontier:
        for reader in frontier.pop().outputs:
            for output in reader.outputs:
                if id(output) not in seen:
                    seen.add(id(output))
                    found.append(output)
                    frontier.append(output)
    return found


def _keep_gathers(graph, node) -> Any:
    """The axis-0 Gathers that take candidates at an NMS's selected positions (boxes[keep]),
    followed from its output through the ops that move indices (its rows' box column, the
    first K), and None; or [] and what else reads the positions (their meaning would change)."""
    outputs = {id(t) for t in graph.outputs}
    found, frontier = [], [node.outputs[0]]
    while frontier:
        tensor = frontier.pop()
        if id(tensor) in outputs:
            return [], f"{tensor.name} (the NMS's selected indices) is a graph output"
        for reader in tensor.outputs:
            if reader.op == "Gather" and reader.attrs.get("axis", 0) == 0 and \
                    reader.inputs[1] is tensor:
                found.append(reader)
            elif reader.op in _INDEX_MOVES and reader.inputs[0] is tensor:
                frontier.extend(reader.outputs)
            else:
                return [], f"{reader.name} ({reader.op}) reads the NMS's selected indices"
    return found, None


def _drops_empty_boxes(nms) -> bool:
    """Whether a filter before `nms` keeps only boxes at least some positive size wide and high
    (torchvision's remove_small_boxes: (x2 - x1 >= min_size) & (y2 - y1 >= min_size)), so that an
    empty box, and what a box head decodes from one (its width and height scale the proposal's),
    never reaches it."""
    for nonzero in _filters_into(nms):
        compares = [node for node in _made_from(nonzero.inputs[0], 4)
                    if node.op in ("GreaterOrEqual", "Greater")]
        sizes = [c for c in compares if producer(c.inputs[0], "Sub") is not None and
                 (constant_value(c.inputs[1]) is not None and
                  float(np.asarray(constant_value(c.inputs[1])).reshape(-1)[0]) > 0)]
        if len(sizes) >= 2:  # the width and the height
            return True
    return False


def _made_from(tensor, depth: int) -> List[Any]:
    """The nodes within `depth` producers above `tensor`."""
    found, frontier = [], [(tensor, 0)]
    while frontier:
        tensor, level = frontier.pop()
        if not tensor.inputs or level >= depth:
            continue
        node = tensor.inputs[0]
        if node not in found:
            found.append(node)
            frontier.extend((t, level + 1) for t in node.inputs)
    return found


def _static_rows_for(graph, node, folded: bool, ctx: PatchContext, k: int,
                     dims: Mapping[str, List[Any]]) -> Any:
    """Where an NMS's kept rows can stay its K rows, those past the kept ones reading an empty
    candidate put in front (all zeros), instead of a NonZero cutting them out: where its filters
    were folded, its positions are read only by the Gathers that take the kept candidates, and
    what those Gathers take either
    - reaches a later NMS whose filters all drop empty boxes (a two-stage detector's RPN: the box
      head decodes an empty box from an empty proposal, and its remove_small_boxes drops it), or
    - reaches no later NMS, only graph outputs of K rows (K x ... or 1 x K x ...: a deployed
      detector's final detections, its heads run per detection in the NMS's order), whose rows
      past the kept ones are then set to 0, as the deploy module pads them.
    (Gathers, [(output, its rows' axis, its rank)], None), or ([], [], why not)."""
    why = skipped_by_policy(ctx, "efficient_nms_static_rows", True)
    if why is not None:
        return [], [], why
    if not folded:
        return [], [], "its filters are not folded"
    gathers, why = _keep_gathers(graph, node)
    if why is not None:
        return [], [], why
    if not gathers:
        return [], [], "no Gather takes what it keeps"
    later, outputs = _reached(graph, gathers)
    if later:
        if not all(_drops_empty_boxes(n) for n in later):
            return [], [], "a later NMS does not drop empty boxes"
        return gathers, [], None
    rows = []
    for output in outputs:
        shape = dims.get(output.name) or list(output.shape or [])
        if len(shape) >= 2 and shape[0] == 1 and shape[1] == k:
            rows.append((output, 1, len(shape)))
        elif shape and shape[0] == k:
            rows.append((output, 0, len(shape)))
        else:
            return [], [], f"graph output {output.name} {shape} is not {k} rows (or 1 x {k})"
    if not rows:
        return [], [], "what it keeps reaches neither a later NMS nor a graph output"
    return gathers, rows, None


def _reached(graph, gathers: List[Any]) -> Any:
    """(the NMS nodes, ONNX or already the plugin, and the graph outputs) that the Gathers'
    outputs reach."""
    taken = [g.outputs[0] for g in gathers]
    tensors = taken + _reached_tensors(taken)
    outputs = {id(t) for t in graph.outputs}
    nms = {id(r): r for t in tensors for r in t.outputs
           if r.op in ("NonMaxSuppression", "EfficientNMS_ONNX_TRT")}
    return list(nms.values()), [t for t in tensors if id(t) in outputs]


def _zero_past_kept(make: NodeMaker, valid, rows: List[Any]) -> None:
    """Each output's rows past the kept ones (`valid` false, in the NMS's output order) set to
    0: what the heads made of the empty candidate, where the model pads with zeros."""
    for output, axis, rank in rows:
        made = output.inputs[0]
        raw = type(output)(f"{output.name}/rows", dtype=output.dtype)
        made.outputs[made.outputs.index(output)] = raw
        shape = [1] * rank
        shape[axis] = -1
        keep = make("Reshape", [valid, make.const(np.array(shape, np.int64))], np.bool_)
        zero = make.const(np.zeros((), dtype=np.dtype(output.dtype)))
        make("Where", [keep, raw, zero], output.dtype, output=output)


def _after_empty_row(make: NodeMaker, gathers: List[Any]) -> None:
    """Each Gather reads its data with an all-zero row put in front (the kept rows' positions
    are 1 up: `_static_positions`)."""
    for gather in gathers:
        data = gather.inputs[0]
        first = make("Slice", [data, make.const(np.array([0], np.int64)),
                               make.const(np.array([1], np.int64)),
                               make.const(np.array([0], np.int64))], data.dtype)
        zero = make("Sub", [first, first], data.dtype)
        gather.inputs[0] = make("Concat", [zero, data], data.dtype, axis=0)
        gather.outputs[0].shape = None


def _static_positions(make: NodeMaker, box_index, valid):
    """The rows' box positions 1 up, 0 (the empty row) where a row is not valid."""
    return make("Where", [valid, make("Add", [box_index, make.const(np.int32(1))], np.int32),
                          make.const(np.int32(0))], np.int32)


def _folded_filters(graph, node, dims: Mapping[str, List[Any]], ctx: PatchContext) -> Any:
    """The filters before an NMS folded (efficient_nms_filters): torchvision's NonZero filters as
    masks (`_fold_filters`), or where there are none, a one-stage detector's top-k filters
    (`_fold_topk_filters`: no mask, a score threshold). (masks, NonZero names, threshold or
    None); masks None where nothing was folded, the names then why."""
    if skipped_by_policy(ctx, "efficient_nms_filters", True):
        return None, "policy 'never'", None
    masks, folded = _fold_filters(graph, node, dims)
    if masks is not None or folded != NO_NONZERO_FILTER:
        return masks, folded, None
    bound, topk_folded = _fold_topk_filters(graph, node, dims)
    if bound is not None:
        return [], topk_folded, bound
    return None, folded if topk_folded == NOT_TOPK_SCORES else topk_folded, None


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
    image's top 4096 scores only. Where it can, the filters before it are folded into its
    scores (`_fold_filters`, `_fold_topk_filters`: efficient_nms_filters) and its K rows stay
    static (`_static_rows_for`: efficient_nms_static_rows), so that no NonZero is left. auto:
    TensorRT before 10.12; off unless asked (config/schema.yaml says why)."""
    version = version_tuple(ctx.backend_version) if ctx.backend_version else ()
    before_deprecation = not version or version[:2] < EFFICIENT_NMS_BEFORE
    skipped = skipped_by_policy(ctx, "efficient_nms", ctx.backend == "tensorrt" and before_deprecation,
                                default="never")
    if skipped:
        return {"skipped": skipped, "rewritten": [], "left": []}
    rewritten, left = [], []
    graph.toposort()  # an NMS before the ones its kept boxes reach (`_static_rows_for`)
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
        masks, folded, bound = _folded_filters(graph, node, dims, ctx)
        if bound is not None:  # the scores the one-stage fold left out sit under it
            attrs["score_threshold"] = max(attrs["score_threshold"], bound)
        mask = _all_of(NodeMaker(graph, f"{node.name}/filters"), masks) if masks else None
        static, zeroed, static_why = _static_rows_for(graph, node, masks is not None, ctx,
                                                      int(k), dims)
        found = _coordinate_trick(node)
        largest = _largest_id(found[2], dims) if found is not None else None
        class_images = largest + 1 if largest is not None and \
            1 <= largest < EFFICIENT_NMS_CLASS_IMAGES_MAX and k <= EFFICIENT_NMS_TOPK_MAX else None
        make = NodeMaker(graph, f"{node.name}/{FP32_LAYER_MARK}")
        if class_images is not None:
            valid = _per_class_images(make, found, class_images, attrs, node.outputs[0], mask,
                                      bool(static))
        else:
            for shifting in _class_shift_nodes(node):  # fp32 too: 122,395 is inf in fp16
                shifting.name = f"{shifting.name}/{FP32_LAYER_MARK}"
            valid = _one_image(make, node.inputs[0], scores, attrs, node.outputs[0], mask,
                               bool(static))
        _after_empty_row(make, static)
        _zero_past_kept(make, valid, zeroed)
        node.outputs.clear()
        node.inputs.clear()
        rewritten.append({"node": node.name, "max_output_boxes": int(k), "kept_after": kept,
                          "candidates_limit": EFFICIENT_NMS_CANDIDATES, "class_images": class_images,
                          "filters_as_mask": folded if masks is not None else [], **(
                              {} if masks is not None else {"filters_kept": folded}),
                          "static_rows": [g.name for g in static],
                          "zeroed_past_kept": [t.name for t, _, _ in zeroed], **(
                              {} if static else {"rows_cut": static_why})})
    if rewritten:
        graph.import_domains = _with_domain(graph.import_domains, PLUGIN_DOMAIN)
    graph.cleanup().toposort()
    return {"rewritten": rewritten, "left": left}


def _valid_rows(make: NodeMaker, rows):
    """(box index, valid) of the plugin's [R, 3] rows. The plugin writes the kept rows first and
    fills the rest with copies of the last kept row (efficientNMSInference.cu PadONNXResult), or
    -1 where none is kept; a box is kept once, so a row is valid if its box is >= 0 and not the
    row before's."""
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
    return make("Squeeze", [make("NonZero", [mask], np.int64), make.const(np.array([0], np.int64))],
                np.int64)


def _one_image(make: NodeMaker, boxes, scores, attrs: Mapping[str, Any], output,
               mask=None, static: bool = False) -> Any:
    """The NMS as one plugin image: its own (class-shifted) boxes, scores [B, N, 1]; the valid
    rows come first, highest score first. With a mask (its filters folded: `_fold_filters`), the
    candidates it keeps out score 0 and the others 1 and above, under a threshold of 0.5."""
    scores_bn1 = make("Transpose", [scores], np.float32, perm=[0, 2, 1])
    if mask is not None:
        member = make.unsqueeze(mask, 1)  # [N, 1]
        if attrs["score_threshold"] > EFFICIENT_NMS_NO_THRESHOLD:
            member = make("And", [member, make("GreaterOrEqual", [
                scores_bn1, make.const(np.float32(attrs["score_threshold"]))], np.bool_)], np.bool_)
        scores_bn1 = make("Where", [member, _moved_up(make, scores_bn1), make.const(np.float32(0.0))],
                          np.float32)
        attrs = {**attrs, "score_threshold": EFFICIENT_NMS_CLASS_THRESHOLD}
    rows = make("EfficientNMS_ONNX_TRT", [boxes, scores_bn1], np.int32, domain=PLUGIN_DOMAIN,
                **attrs)
    box_index, valid = _valid_rows(make, rows)
    if static:  # K rows, the invalid ones at the empty candidate (`_static_rows_for`)
        _as_triples(make, _static_positions(make, box_index, valid), output)
        return valid
    cut = make("Gather", [rows, _where_true(make, valid)], np.int32, axis=0)
    make("Cast", [cut], np.int64, to=7, output=output)
    return None


def _as_triples(make: NodeMaker, kept, output) -> None:
    """Box positions as rows (0, 0, box), as the single-class NMS they stand for writes them."""
    zeros = make("Mul", [kept, make.const(np.int32(0))], np.int32)
    triples = make("Concat", [make.unsqueeze(zeros, 1), make.unsqueeze(zeros, 1),
                              make.unsqueeze(kept, 1)], np.int32, axis=1)
    make("Cast", [triples], np.int64, to=7, output=output)


def _moved_up(make: NodeMaker, scores):
    """`scores` moved to 1 and above: up by 1 less their minimum where that is negative (an
    RPN's probabilities by 1 exactly); the order, and so the plugin's selection, is kept."""
    flat = make("Reshape", [scores, make.const(np.array([-1], np.int64))], np.float32)
    lowest = make("ReduceMin", [make("Concat", [flat, make.const(np.array([0.0], np.float32))],
                                     np.float32, axis=0)], np.float32, keepdims=0)
    return make("Sub", [make("Add", [scores, make.const(np.float32(1.0))], np.float32), lowest],
                np.float32)


def _all_of(make: NodeMaker, masks: List[Any]):
    """The masks And-ed: the candidates every filter keeps."""
    mask = masks[0]
    for other in masks[1:]:
        mask = make("And", [mask, other], np.bool_)
    return mask


def _per_class_images(make: NodeMaker, found, classes: int, attrs: Mapping[str, Any],
                      output, mask=None, static: bool = False) -> Any:
    """torchvision's batched NMS as one plugin image per class: image c reads every candidate's
    own (unshifted) box and its score where its class is c, a score under the threshold where
    not; the images' kept rows (interleaved: the plugin's blocks write through one atomic
    counter) are ranked by score, and the first K are the batched NMS's first K, since a box
    kept in its class is among its class's first K."""
    boxes, scores, ids = found  # [N, 4], [N], [N]
    k = int(attrs["max_output_boxes_per_class"])
    member = make("Equal", [make.unsqueeze(make("Cast", [ids], np.int64, to=7), 0),
                            make.const(np.arange(classes, dtype=np.int64).reshape(classes, 1))],
                  np.bool_)
    if attrs["score_threshold"] > EFFICIENT_NMS_NO_THRESHOLD:
        member = make("And", [member, make.unsqueeze(make("GreaterOrEqual", [
            scores, make.const(np.float32(attrs["score_threshold"]))], np.bool_), 0)], np.bool_)
    if mask is not None:  # its filters folded (`_fold_filters`)
        member = make("And", [member, make.unsqueeze(mask, 0)], np.bool_)
    # Under a threshold below 0.007 the plugin takes every score as a candidate
    # (EfficientNMSDenseIndex: those under it score -32768 and are still kept, up to K), so the
    # images' scores are put at 1 and above (the scores moved up by 1 less their minimum when
    # that is negative: an RPN's probabilities by 1 exactly), other classes' at 0, and the
    # plugin's threshold is 0.5: it walks its own class's candidates only (EfficientNMSFilter)
    class_scores = make("Where", [member, make.unsqueeze(_moved_up(make, scores), 0),
                                  make.const(np.float32(0.0))], np.float32)
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
    ranked_valid = make("Gather", [valid, ranked], np.bool_)
    if static:  # K rows, the invalid ones at the empty candidate (`_static_rows_for`)
        kept = _static_positions(make, make("Gather", [box_index, ranked], np.int32), ranked_valid)
    else:
        kept = make("Gather", [box_index, make("Gather", [ranked, _where_true(make, ranked_valid)],
                                               np.int64)], np.int32)
    _as_triples(make, kept, output)
    return ranked_valid if static else None


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


def nms_passes() -> Dict[str, Callable[[Any, PatchContext], Dict[str, Any]]]:
    return {"multiclass_nms": multiclass_nms, "efficient_nms": efficient_nms}
