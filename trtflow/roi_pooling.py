"""RoI pooling passes for TensorRT: RoiAlign as GridSample, and an FPN's multi-scale RoI pooling
as one GridSample over all its levels.

torchvision's MultiScaleRoIAlign exports as, per FPN level, `Equal(levels, l) -> NonZero ->
Gather` of the RoIs at that level, a RoiAlign, and a `ScatterElements` of its rows back into the
full result. Every NonZero is a data-dependent shape: on TensorRT 8.6 each one is a
synchronising "train station" layer, and the level subsets stop CUDA-graph capture
(benchmarks/gpu/detectors.md). `pyramid_roialign` pools every RoI from its own level in one
GridSample over an atlas of the levels side by side: no NonZero, no scatter, standard ops only
(NVIDIA's Detectron2 sample uses the PyramidROIAlign_TRT plugin instead, which takes only a
static RoI count and fp32; notes/trt_api.md section 15).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .graph_surgery import (NodeMaker, PatchContext, constant_value, producer, skipped_by_policy,
                            through)
from .known_dims import known_dims

# RoiAlign's attributes that must agree across the levels of one pooling
SHARED_ATTRIBUTES = ("output_height", "output_width", "sampling_ratio", "mode",
                     "coordinate_transformation_mode")
# ops between a level's NonZero and the row indices its Gather takes (torch.where(...)[0])
_INDEX_OPS = ("Squeeze", "Split", "Transpose", "Reshape", "Unsqueeze", "Flatten", "Cast")


def _roialign_supported(node, graph) -> str:
    """Why this RoiAlign cannot become GridSample ('' when it can)."""
    if node.attrs.get("mode", "avg") != "avg":
        return "mode max"
    if int(node.attrs.get("sampling_ratio", 0)) <= 0:
        return "adaptive sampling_ratio 0 (sample count depends on the box size)"
    if graph.opset < 16:
        return f"opset {graph.opset} has no GridSample (16+)"
    shape = node.inputs[0].shape or (graph.inputs[0].shape if graph.inputs else None)
    if not shape or shape[0] != 1:
        return "the features are not of static batch 1 (batch_indices would matter)"
    return ""


@dataclass
class _Sampled:
    """Where a RoI's samples are taken, per RoI ([R, 1] tensors) or for all (scalars): the
    image-to-feature scale, the level's width and height in pixels, and where the level starts
    in the sampled image (the atlas) as a share of that image's grid ([-1, 1] coordinates)."""
    scale: Any
    width: Any
    height: Any
    origin_x: Any
    origin_y: Any
    extent_x: Any  # the sampled image's width - 1 (align_corners coordinates)
    extent_y: Any


def _sample_axis(make: NodeMaker, low, high, cells: int, ratio: int, half_pixel: bool,
                 scale, size, origin, extent) -> Tuple[Any, Any]:
    """GridSample coordinates of one axis' sample points (R x cells*ratio) and whether each
    counts (RoiAlign: a point beyond [-1, size] adds 0).

    RoiAlign's points, clamped to the level's pixel centres [0, size - 1] as RoiAlign clamps
    them, in [-1, 1] over the sampled image: point * 2 / extent + origin, the origin a per-level
    constant, so that fp16 holds each term at its own scale (an atlas position of up to 630
    pixels would be rounded to half a pixel)."""
    import numpy as np

    f32 = np.float32
    offset = 0.5 if half_pixel else 0.0
    start = make("Sub", [make("Mul", [low, scale], f32), make.const(f32(offset))], f32)
    end = make("Sub", [make("Mul", [high, scale], f32), make.const(f32(offset))], f32)
    length = make("Sub", [end, start], f32)
    if not half_pixel:  # output_half_pixel (torchvision aligned=False): boxes at least 1 px
        length = make("Max", [length, make.const(f32(1.0))], f32)
    steps = [(k // ratio) + ((k % ratio) + 0.5) / ratio for k in range(cells * ratio)]
    bins = make("Div", [length, make.const(f32(cells))], f32)
    points = make("Add", [start, make("Mul", [bins, make.const(np.array([steps], f32))], f32)], f32)
    inside = make("And", [
        make("GreaterOrEqual", [points, make.const(f32(-1.0))], np.bool_),
        make("LessOrEqual", [points, size], np.bool_)], np.bool_)
    last = make("Sub", [size, make.const(f32(1.0))], f32)
    clamped = make("Min", [make("Max", [points, make.const(f32(0.0))], f32), last], f32)
    per_pixel = make("Div", [make.const(f32(2.0)), extent], f32)
    grid = make("Add", [make("Mul", [clamped, per_pixel], f32), origin], f32)
    return grid, make("Cast", [inside], f32, to=1)


def _pool(make: NodeMaker, atlas, boxes: Sequence[Any], where: _Sampled, out_h: int, out_w: int,
          ratio: int, half_pixel: bool, pooled) -> None:
    """RoiAlign of every RoI (boxes: x1, y1, x2, y2 columns, R x 1) from `atlas` [1, C, H, W],
    written to `pooled` [R, C, out_h, out_w]: one GridSample of every RoI's sample points laid
    out as rows of one grid (align_corners: pixel centres at integer coordinates, RoiAlign's
    convention), masked where RoiAlign adds 0, averaged per cell by an AveragePool."""
    import numpy as np

    f32, i64 = np.float32, np.int64
    grid_x, valid_x = _sample_axis(make, boxes[0], boxes[2], out_w, ratio, half_pixel,
                                   where.scale, where.width, where.origin_x, where.extent_x)
    grid_y, valid_y = _sample_axis(make, boxes[1], boxes[3], out_h, ratio, half_pixel,
                                   where.scale, where.height, where.origin_y, where.extent_y)
    rows, cols = out_h * ratio, out_w * ratio
    full = make.const(np.array([1, rows, cols], i64))
    xs = make("Expand", [make.unsqueeze(grid_x, 1), full], f32)  # R x rows x cols
    ys = make("Expand", [make.unsqueeze(grid_y, 2), full], f32)
    pairs = make("Concat", [make.unsqueeze(xs, 3), make.unsqueeze(ys, 3)], f32, axis=3)
    grid = make("Reshape", [pairs, make.const(np.array([1, -1, cols, 2], i64))], f32)
    sampled = make("GridSample", [atlas, grid], f32, mode="bilinear", padding_mode="border",
                   align_corners=1)  # 1 x C x R*rows x cols
    per_roi = make("Reshape", [make("Squeeze", [sampled, make.const(np.array([0], i64))], f32),
                               make.const(np.array([0, -1, rows, cols], i64))], f32)
    samples = make("Transpose", [per_roi], f32, perm=[1, 0, 2, 3])  # R x C x rows x cols
    valid = make("Mul", [make.unsqueeze(valid_y, 2), make.unsqueeze(valid_x, 1)], f32)
    cells = make("Mul", [samples, make.unsqueeze(valid, 1)], f32)
    make("AveragePool", [cells], f32, output=pooled, kernel_shape=[ratio, ratio],
         strides=[ratio, ratio])


def _box_columns(make: NodeMaker, rois, first: int) -> List[Any]:
    """x1, y1, x2, y2 of `rois` (R x (first + 4)), R x 1 each."""
    import numpy as np

    columns = make("Split", [rois, make.const(np.array([1] * (first + 4), np.int64))], np.float32,
                   outputs=first + 4, axis=1)
    split = columns.inputs[0]
    return list(split.outputs[first:])


def _roialign_as_gridsample(graph, node) -> None:
    """RoiAlign(X, rois, batch_indices) -> the same bilinear samples taken by one GridSample."""
    import numpy as np

    f32, i64 = np.float32, np.int64
    make = NodeMaker(graph, node.name or "roialign")
    features = node.inputs[0]
    shape = make("Shape", [features], i64)

    def dim(index: int):
        return make("Cast", [make("Gather", [shape, make.const(np.int64(index))], i64)], f32, to=1)

    width, height = dim(3), dim(2)
    one = make.const(f32(1.0))
    where = _Sampled(scale=make.const(f32(node.attrs.get("spatial_scale", 1.0))),
                     width=width, height=height,
                     origin_x=make.const(f32(-1.0)), origin_y=make.const(f32(-1.0)),
                     extent_x=make("Max", [make("Sub", [width, one], f32), one], f32),
                     extent_y=make("Max", [make("Sub", [height, one], f32), one], f32))
    half_pixel = node.attrs.get("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    _pool(make, features, _box_columns(make, node.inputs[1], 0), where,
          int(node.attrs.get("output_height", 1)), int(node.attrs.get("output_width", 1)),
          int(node.attrs["sampling_ratio"]), half_pixel, node.outputs[0])
    node.outputs.clear()
    node.inputs.clear()


def roialign_to_gridsample(graph, ctx: PatchContext) -> Dict[str, Any]:
    """Rewrite RoiAlign (Mask/Keypoint R-CNN's RoI pooling) as GridSample + AveragePool.

    TensorRT's ONNX parser maps RoiAlign to the ROIAlign_TRT plugin, which needs the plugin
    library (and, on 8.6, its version-compatible twin) at build and run time; GridSample is a
    native layer from TensorRT 8.6 on. Policy auto rewrites for TensorRT only."""
    skipped = skipped_by_policy(ctx, "roialign_to_gridsample", ctx.backend == "tensorrt")
    if skipped:
        return {"skipped": skipped, "rewritten": []}
    rewritten, kept = [], {}
    for node in [n for n in graph.nodes if n.op == "RoiAlign"]:
        reason = _roialign_supported(node, graph)
        if reason:
            kept[node.name] = reason
            continue
        _roialign_as_gridsample(graph, node)
        rewritten.append(node.name)
    graph.cleanup().toposort()
    return {"rewritten": rewritten, "kept": kept}


# --- an FPN's RoI pooling over all levels at once ---------------------------------------------

@dataclass
class _Level:
    """One level's RoiAlign of a MultiScaleRoIAlign: its level id, node and merging scatter."""
    level: int
    roialign: Any
    scatter: Any


@dataclass
class _Pyramid:
    """A MultiScaleRoIAlign: every RoI's row (batch index, x1, y1, x2, y2), its level, the last
    ScatterElements of the chain that merges the levels (its output is the pooled result), and
    the levels' RoiAligns."""
    rois: Any
    levels: Any
    merged: Any
    members: List[_Level]


def _level_of(roialign) -> Optional[Tuple[Any, Any, int]]:
    """(all RoIs, the level tensor, this level's id) where `roialign` pools the rows of RoIs
    whose level equals an id, as MultiScaleRoIAlign exports it; None for any other RoiAlign."""
    columns = producer(roialign.inputs[1], "Gather")
    if columns is None or not _is_box_columns(columns):
        return None
    rows = producer(columns.inputs[0], "Gather")
    if rows is None or int(rows.attrs.get("axis", 0)) != 0:
        return None
    nonzero = producer(through(rows.inputs[1], *_INDEX_OPS), "NonZero")
    equal = producer(through(nonzero.inputs[0], "Cast"), "Equal") if nonzero is not None else None
    if equal is None:
        return None
    for levels, value in (equal.inputs, equal.inputs[::-1]):
        level = constant_value(value)
        if level is not None and level.size == 1 and constant_value(levels) is None:
            return rows.inputs[0], levels, int(level.reshape(-1)[0])
    return None


def _is_box_columns(gather) -> bool:
    """A Gather of columns 1..4 (x1, y1, x2, y2) of the RoIs' rows (column 0: batch index)."""
    indices = constant_value(gather.inputs[1])
    return (int(gather.attrs.get("axis", 0)) == 1 and indices is not None
            and [int(i) for i in indices.reshape(-1)] == [1, 2, 3, 4])


def _merging_scatter(roialign) -> Optional[Any]:
    """The ScatterElements that writes this RoiAlign's rows into the merged result."""
    tensors = [roialign.outputs[0]]
    while tensors:
        tensor = tensors.pop()
        for node in tensor.outputs:
            if node.op == "ScatterElements" and node.inputs[2] is tensor:
                return node
            if node.op in ("Cast", "Identity"):
                tensors.append(node.outputs[0])
    return None


def _merged_by(scatter) -> Any:
    """The last ScatterElements of the chain `scatter` writes into (each reads the one before as
    its data): one MultiScaleRoIAlign's merged result."""
    while True:
        following = [n for n in scatter.outputs[0].outputs
                     if n.op == "ScatterElements" and n.inputs[0] is scatter.outputs[0]]
        if len(following) != 1:
            return scatter
        scatter = following[0]


def _pyramids(graph) -> Tuple[List[_Pyramid], Dict[str, str]]:
    """Every MultiScaleRoIAlign of the graph (its levels' RoiAligns, grouped by the scatters that
    merge them: two poolings of the same RoIs share their level subsets), and why other
    RoiAligns are not one."""
    found: Dict[str, _Pyramid] = {}
    other: Dict[str, str] = {}
    for node in [n for n in graph.nodes if n.op == "RoiAlign"]:
        source = _level_of(node)
        scatter = _merging_scatter(node) if source is not None else None
        if scatter is None:
            other[node.name] = "not one level of a multi-scale RoI pooling"
            continue
        rois, levels, level = source
        merged = _merged_by(scatter)
        pyramid = found.setdefault(merged.name, _Pyramid(rois, levels, merged, []))
        if rois is not pyramid.rois or levels is not pyramid.levels:
            other[node.name] = "its level's RoIs are not those of the other levels"
            continue
        pyramid.members.append(_Level(level, node, scatter))
    for pyramid in found.values():
        pyramid.members.sort(key=lambda member: member.level)
    return list(found.values()), other


def _static_shape(tensor, dims: Mapping[str, List[Any]]) -> Optional[List[int]]:
    """`tensor`'s [1, C, H, W] where C, H and W are known (from the graph or shape inference;
    the batch, which shape inference often loses through a detector's transform, is checked by
    _roialign_supported), else None."""
    for shape in (tensor.shape, dims.get(tensor.name)):
        if shape and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[1:]):
            return [1] + [int(d) for d in shape[1:]]
    return None


def _pyramid_refusal(pyramid: _Pyramid, graph, dims: Mapping[str, List[Any]]) -> str:
    """Why this pooling cannot be one GridSample ('' when it can)."""
    members = pyramid.members
    if [m.level for m in members] != list(range(len(members))) or len(members) < 2:
        return f"levels {[m.level for m in members]} are not 0..L-1"
    first = members[0].roialign
    channels = None
    for member in members:
        reason = _roialign_supported(member.roialign, graph)
        if reason:
            return f"{member.roialign.name}: {reason}"
        if any(member.roialign.attrs.get(a) != first.attrs.get(a) for a in SHARED_ATTRIBUTES):
            return f"{member.roialign.name}: its {SHARED_ATTRIBUTES} differ from level 0's"
        shape = _static_shape(member.roialign.inputs[0], dims)
        if shape is None:
            return f"{member.roialign.name}: features of unknown size (C x H x W)"
        if channels not in (None, shape[1]):
            return f"{member.roialign.name}: {shape[1]} channels, level 0 has {channels}"
        channels = shape[1]
    if len(_scatter_chain(pyramid.merged, {id(m.scatter) for m in members})) != len(members):
        return "its levels are not merged by one chain of ScatterElements"
    return ""


def _scatter_chain(final, scatters: set) -> List[Any]:
    """The merging ScatterElements from the last back to the first (each writes into the last's
    output)."""
    found = []
    node = final
    while node is not None and id(node) in scatters:
        found.append(node)
        node = producer(node.inputs[0], "ScatterElements")
    return found


def _atlas(make: NodeMaker, features: Sequence[Any], shapes: Sequence[List[int]]
           ) -> Tuple[Any, List[int], int, int]:
    """The levels side by side in one image, each padded below to the tallest: the image, the
    x offset of each level, and the image's height and width."""
    import numpy as np

    height = max(shape[2] for shape in shapes)
    placed, offsets, x = [], [], 0
    for feature, (_, _, h, w) in zip(features, shapes):
        if h < height:
            pads = np.array([0, 0, 0, 0, 0, 0, height - h, 0], np.int64)
            feature = make("Pad", [feature, make.const(pads)], np.float32, mode="constant")
        placed.append(feature)
        offsets.append(x)
        x += w
    return make("Concat", placed, np.float32, axis=3), offsets, height, x


def _pool_pyramid(graph, pyramid: _Pyramid, atlases: Dict[Tuple[str, ...], Any],
                  dims: Mapping[str, List[Any]]) -> None:
    """Every RoI pooled from its own level of one atlas (made once per set of levels)."""
    import numpy as np

    f32, i64 = np.float32, np.int64
    first = pyramid.members[0].roialign
    make = NodeMaker(graph, f"{first.name}/pyramid")
    features = [m.roialign.inputs[0] for m in pyramid.members]
    shapes = [_static_shape(f, dims) for f in features]
    key = tuple(f.name for f in features)
    if key not in atlases:
        atlases[key] = _atlas(NodeMaker(graph, f"{first.name}/atlas"), features, shapes)
    atlas, offsets, height, width = atlases[key]
    levels = make("Cast", [pyramid.levels], i64, to=7)

    def per_roi(values: Sequence[float]):
        return make.unsqueeze(make("Gather", [make.const(np.array(values, f32)), levels], f32), 1)

    extent_x, extent_y = float(max(width - 1, 1)), float(max(height - 1, 1))
    where = _Sampled(
        scale=per_roi([float(m.roialign.attrs.get("spatial_scale", 1.0)) for m in pyramid.members]),
        width=per_roi([float(shape[3]) for shape in shapes]),
        height=per_roi([float(shape[2]) for shape in shapes]),
        origin_x=per_roi([2.0 * x / extent_x - 1.0 for x in offsets]),
        origin_y=make.const(f32(-1.0)),
        extent_x=make.const(f32(extent_x)), extent_y=make.const(f32(extent_y)))
    merged = pyramid.merged.outputs[0]
    pyramid.merged.outputs.clear()
    half_pixel = first.attrs.get("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    _pool(make, atlas, _box_columns(make, pyramid.rois, 1), where,
          int(first.attrs.get("output_height", 1)), int(first.attrs.get("output_width", 1)),
          int(first.attrs["sampling_ratio"]), half_pixel, merged)


def pyramid_roialign(graph, ctx: PatchContext) -> Dict[str, Any]:
    """An FPN's multi-scale RoI pooling (torchvision's MultiScaleRoIAlign: a NonZero, Gather,
    RoiAlign and ScatterElements per level) -> every RoI pooled from its own level by one
    GridSample over the levels side by side, with the graph's own level of each RoI.

    The same samples as the RoiAligns, with no data-dependent shape: on TensorRT 8.6 each
    level's NonZero was a synchronising layer. Policy auto: TensorRT only (ONNX Runtime runs
    RoiAlign and NonZero natively). Runs before roialign_to_gridsample, which takes the
    RoiAligns left."""
    skipped = skipped_by_policy(ctx, "pyramid_roialign", ctx.backend == "tensorrt")
    if skipped:
        return {"skipped": skipped, "rewritten": []}
    pyramids, single = _pyramids(graph)
    dims = known_dims(graph) if pyramids else {}
    rewritten: List[Dict[str, Any]] = []
    kept: Dict[str, str] = {}
    atlases: Dict[Tuple[str, ...], Any] = {}
    for pyramid in pyramids:
        names = [m.roialign.name for m in pyramid.members]
        reason = _pyramid_refusal(pyramid, graph, dims)
        if reason:
            kept.update({name: reason for name in names})
            continue
        _pool_pyramid(graph, pyramid, atlases, dims)
        rewritten.append({"roialigns": names, "levels": len(names),
                          "nonzero_removed": len(names)})
    graph.cleanup().toposort()
    return {"rewritten": rewritten, "kept": kept, "single": single, "atlases": len(atlases),
            "nonzero_left": sum(n.op == "NonZero" for n in graph.nodes)}


def roi_pooling_passes() -> Mapping[str, Any]:
    """This module's passes by name (trtflow.patch.PASSES)."""
    return {"pyramid_roialign": pyramid_roialign, "roialign_to_gridsample": roialign_to_gridsample}
