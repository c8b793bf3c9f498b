"""trtflow.nms, efficient_nms_filters: the NonZero filters torchvision runs before an NMS (small
boxes, low scores) folded into the EfficientNMS plugin's scores, on graphs exported from
torchvision's own post-processing code, checked node by node and against torchvision on ONNX
Runtime (through the plugin's standard-op form)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np
import onnx
import pytest

from trtflow.nms import onnxruntime_runnable
from trtflow.patch import PatchContext, apply_passes

PASSES = ["inline_empty_guards", "fold_constants", "efficient_nms", "cleanup", "toposort"]
LEVELS, PER_LEVEL, CLASSES = 5, 40, 91


def _padded(tensor, rows: int):
    """`tensor` padded with zero rows to `rows`: a static output, as the workflow's detectors
    pad theirs (what an engine's runner reads)."""
    import torch

    return torch.cat([tensor, torch.zeros((rows,) + tuple(tensor.shape[1:]), dtype=tensor.dtype)])[:rows]


def _rpn_module(kept: int, return_keep: bool = False, padded: bool = False):
    """torchvision's RegionProposalNetwork.filter_proposals for one image, from its own
    functions: level ids, remove_small_boxes, the score threshold (>=), the batched NMS per
    level, its first `kept`; the kept boxes and scores (or, where asked, the kept positions),
    padded to `kept` rows where asked."""
    import torch
    from torchvision.ops import boxes as box_ops

    class Proposals(torch.nn.Module):
        def forward(self, boxes, scores):
            per_level = boxes.shape[0] // LEVELS
            levels = torch.cat([torch.full((per_level,), level, dtype=torch.int64)
                                for level in range(LEVELS)])
            keep = box_ops.remove_small_boxes(boxes, 1.0)
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
            keep = torch.where(scores >= 0.05)[0]
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
            keep = box_ops.batched_nms(boxes, scores, levels, 0.7)[:kept]
            if return_keep:
                return keep
            if padded:
                return _padded(boxes[keep], kept), _padded(scores[keep], kept)
            return boxes[keep], scores[keep]

    return Proposals()


def _box_head_module(kept: int, padded: bool = False):
    """torchvision's RoIHeads.postprocess_detections for one image: per-class boxes and scores
    (background dropped) flattened, the score threshold (>), remove_small_boxes, the batched NMS
    over classes, its first `kept` (padded to `kept` rows where asked)."""
    import torch
    from torchvision.ops import boxes as box_ops

    class Detections(torch.nn.Module):
        def forward(self, boxes, scores):  # [N, C, 4], [N, C]
            labels = torch.arange(scores.shape[1]).view(1, -1).expand_as(scores)
            boxes, scores, labels = boxes[:, 1:], scores[:, 1:], labels[:, 1:]
            boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
            inds = torch.where(scores > 0.05)[0]
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, 0.5)[:kept]
            if padded:
                return tuple(_padded(t[keep], kept) for t in (boxes, scores, labels))
            return boxes[keep], scores[keep], labels[keep]

    return Detections()


def _export(module, inputs, path: Path, names: List[str], outputs: List[str]) -> onnx.ModelProto:
    """The module as ONNX, its inputs' first axis (the candidates) dynamic."""
    import torch

    torch.onnx.export(module, tuple(torch.from_numpy(x) for x in inputs), str(path),
                      input_names=names, output_names=outputs, opset_version=17, dynamo=False,
                      dynamic_axes={name: {0: "n"} for name in names})
    return onnx.load(str(path))


def _proposals(seed: int, small: float = 0.2, low: float = 0.3) -> Dict[str, np.ndarray]:
    """LEVELS x PER_LEVEL overlapping boxes of a 1344 image, a share `small` under 1 pixel wide,
    a share `low` scoring under 0.05; distinct scores."""
    rng = np.random.default_rng(seed)
    count = LEVELS * PER_LEVEL
    corners = 200 + rng.random((count, 2), dtype=np.float32) * 300
    sizes = 20 + rng.random((count, 2), dtype=np.float32) * 200
    sizes[rng.random(count) < small, 0] = 0.5
    scores = (rng.permutation(count).astype(np.float32) + 1) / count
    scores[rng.random(count) < low] *= 0.04
    return {"boxes": np.concatenate([corners, corners + sizes], 1), "scores": scores}


def _detections(seed: int, regions: int = 30) -> Dict[str, np.ndarray]:
    """A box head's output for `regions` regions: per-class boxes [N, C, 4] around a few places
    (some under 0.01 wide) and softmax scores [N, C], most classes under 0.05."""
    rng = np.random.default_rng(seed)
    centres = 300 + rng.random((regions, 1, 2), dtype=np.float32) * 100
    sizes = 10 + rng.random((regions, CLASSES, 2), dtype=np.float32) * 150
    sizes[rng.random((regions, CLASSES)) < 0.1, 1] = 0.005
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 2).astype(np.float32)
    logits = rng.standard_normal((regions, CLASSES)).astype(np.float32) * 3
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"boxes": boxes, "scores": scores.astype(np.float32)}


def _patched(model: onnx.ModelProto, options: Dict[str, str]):
    patched, reports = apply_passes(model, PASSES, PatchContext(
        "m", "tensorrt", {"efficient_nms": "auto", **options}, backend_version="8.6.0"))
    return patched, reports[2]["rewritten"]


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _run(model: onnx.ModelProto, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(onnxruntime_runnable(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _torch(module, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
    import torch

    out = module(*(torch.from_numpy(v) for v in feed.values()))
    return [out.numpy()] if isinstance(out, torch.Tensor) else [t.numpy() for t in out]


def test_rpn_filters_fold_into_the_plugin_images_scores(tmp_path: Path) -> None:
    """Node by node: an RPN's two filters (small boxes, low scores) leave no NonZero but the
    plugin's valid rows; their masks, And-ed, are a condition of the per-level images' scores;
    the kept boxes are read from the unfiltered candidates."""
    feed = _proposals(0)
    original = _export(_rpn_module(20), list(feed.values()), tmp_path / "rpn.onnx",
                       ["boxes", "scores"], ["kept_boxes", "kept_scores"])
    assert _ops(original)["NonZero"] >= 2
    patched, (entry,) = _patched(original, {})
    assert len(entry["filters_as_mask"]) == 2 and entry["class_images"] == LEVELS
    assert "filters_kept" not in entry
    nodes = list(patched.graph.node)
    made = {o: n for n in nodes for o in n.output}
    (plugin,) = [n for n in nodes if n.op_type == "EfficientNMS_ONNX_TRT"]
    (nonzero,) = [n for n in nodes if n.op_type == "NonZero"]
    # the plugin's valid rows (ranked across the images): made with the plugin, in place of the NMS
    assert nonzero.name.split("/")[0] == plugin.name.split("/")[0]
    where = made[made[plugin.input[1]].input[0]]  # Unsqueeze <- Where(member, moved score, 0)
    member = made[where.input[0]]
    assert where.op_type == "Where" and member.op_type == "And"
    assert {made[t].op_type for t in member.input} >= {"Equal", "Unsqueeze"}  # its level, its filters
    # the kept boxes: a Gather of the graph's input boxes (unfiltered), by the NMS's positions
    kept_boxes = made[patched.graph.output[0].name]
    assert kept_boxes.op_type == "Gather" and kept_boxes.input[0] == "boxes"
    onnx.checker.check_model(patched)


@pytest.mark.parametrize("seed, small, low", [(0, 0.2, 0.3), (1, 0.0, 0.0), (2, 1.0, 0.0),
                                              (3, 0.0, 1.0), (4, 0.5, 0.6)])
def test_rpn_with_filters_folded_keeps_what_torchvision_keeps(tmp_path: Path, seed: int,
                                                               small: float, low: float) -> None:
    """The kept boxes and scores are torchvision's, in its order: with some candidates filtered,
    none, and all (every box too small, every score too low)."""
    feed = _proposals(seed, small, low)
    module = _rpn_module(20)
    original = _export(module, list(_proposals(0).values()), tmp_path / "rpn.onnx",
                       ["boxes", "scores"], ["kept_boxes", "kept_scores"])
    patched, _ = _patched(original, {})
    expected = _torch(module, feed)
    got = _run(patched, feed)
    assert small < 1 and low < 1 or len(expected[0]) == 0
    for want, have in zip(expected, got):
        assert want.shape == have.shape and np.array_equal(want, have)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_head_with_filters_folded_keeps_what_torchvision_keeps(tmp_path: Path, seed: int) -> None:
    """A box head's 90 classes (one plugin image, class-shifted boxes): its two filters (score
    over 0.05, small boxes) folded, one NonZero left; the detections are torchvision's, in fp32
    and in the fp16 graph (the class shift and the moved scores stay fp32): the same ones, their
    values rounded to fp16 as the graph's inputs are."""
    from trtflow.precision import to_fp16

    module = _box_head_module(10)
    original = _export(module, list(_detections(0).values()), tmp_path / "head.onnx",
                       ["boxes", "scores"], ["kept_boxes", "kept_scores", "kept_labels"])
    patched, (entry,) = _patched(original, {})
    assert len(entry["filters_as_mask"]) == 2 and entry["class_images"] is None
    assert _ops(patched)["NonZero"] == 1
    onnx.save(patched, str(tmp_path / "patched.onnx"))
    to_fp16(tmp_path / "patched.onnx", tmp_path / "fp16.onnx")
    feed = _detections(seed)
    expected = _torch(module, feed)
    assert 0 < len(expected[0]) <= 10
    for graph, dtype in ((patched, np.float32), (onnx.load(str(tmp_path / "fp16.onnx")), np.float16)):
        got = _run(graph, feed)
        assert np.array_equal(got[2], expected[2])  # labels
        for have, want in zip(got[:2], expected[:2]):  # the fp16 graph's inputs are rounded to fp16
            assert np.array_equal(have, want.astype(dtype).astype(np.float32))


def test_filters_stay_where_the_nms_positions_are_read_otherwise(tmp_path: Path) -> None:
    """An NMS whose selected positions are the graph's output (positions among the filtered
    candidates): folding would change what they mean, so the filters stay, and patch.json says
    why; policy never leaves them too."""
    feed = _proposals(0)
    positions = _export(_rpn_module(20, return_keep=True), list(feed.values()),
                        tmp_path / "keep.onnx", ["boxes", "scores"], ["keep"])
    patched, (entry,) = _patched(positions, {})
    assert entry["filters_as_mask"] == [] and "graph output" in entry["filters_kept"]
    assert _ops(patched)["NonZero"] == 3  # the two filters and the plugin's valid rows
    assert np.array_equal(_run(patched, feed)[0], _torch(_rpn_module(20, return_keep=True), feed)[0])
    boxes = _export(_rpn_module(20), list(feed.values()), tmp_path / "rpn.onnx",
                    ["boxes", "scores"], ["kept_boxes", "kept_scores"])
    patched, (entry,) = _patched(boxes, {"efficient_nms_filters": "never"})
    assert entry["filters_as_mask"] == [] and entry["filters_kept"].startswith("policy 'never'")
    assert _ops(patched)["NonZero"] == 3  # the two filters and the plugin's valid rows


def test_filters_side_by_side_stay(tmp_path: Path) -> None:
    """Two filters over the same candidates, side by side (boxes by one, scores by the other):
    the NMS pairs their i-th kept rows, which the unfiltered candidates under both masks would
    not, so neither is folded."""
    import torch
    from torchvision.ops import boxes as box_ops

    class SideBySide(torch.nn.Module):
        def forward(self, boxes, scores):
            by_score = torch.where(scores >= 0.05)[0]
            by_width = torch.where(scores * 2.0 >= 0.1)[0]
            keep = box_ops.nms(boxes[by_width], scores[by_score], 0.7)[:20]
            return _padded(boxes[by_width][keep], 20)

    feed = _proposals(0)
    model = _export(SideBySide(), list(feed.values()), tmp_path / "side.onnx", ["boxes", "scores"],
                    ["kept_boxes"])
    patched, (entry,) = _patched(model, {})
    assert entry["filters_as_mask"] == [] and "one chain" in entry["filters_kept"], entry
    assert np.array_equal(_run(patched, feed)[0], _torch(SideBySide(), feed)[0])


def _two_stage_module(proposals: int, detections: int, size_filter: bool = True):
    """An RPN's filter_proposals (`_rpn_module`, its first `proposals`) and a box head that
    works row by row as torchvision's does: per proposal, class deltas and logits from a fixed
    linear map of its coordinates, decoded by torchvision's BoxCoder, clipped, then
    postprocess_detections (`_box_head_module`; without remove_small_boxes where asked), its
    detections padded to 1 x `detections` rows as the workflow's deploy module pads them."""
    import torch
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.ops import boxes as box_ops

    from trtflow.detection import pad_detections

    rpn, classes = _rpn_module(proposals), 5
    generator = torch.Generator().manual_seed(0)
    deltas = torch.randn(4, classes * 4, generator=generator) * 0.002
    logits = torch.randn(4, classes, generator=generator) * 0.01
    bias = torch.randn(classes, generator=generator)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))

    class TwoStage(torch.nn.Module):
        def forward(self, boxes, scores):
            regions, _ = rpn(boxes, scores)
            class_boxes = coder.decode(regions @ deltas, [regions]).reshape(-1, classes, 4)
            class_boxes = box_ops.clip_boxes_to_image(class_boxes, (1344, 1344))
            class_scores = torch.softmax(regions @ logits + bias, -1)
            labels = torch.arange(classes).view(1, -1).expand_as(class_scores)
            found = [t[:, 1:].reshape(-1, *t.shape[2:]) for t in (class_boxes, class_scores, labels)]
            inds = torch.where(found[1] > 0.05)[0]
            found = [t[inds] for t in found]
            if size_filter:
                keep = box_ops.remove_small_boxes(found[0], min_size=1e-2)
                found = [t[keep] for t in found]
            keep = box_ops.batched_nms(found[0], found[1], found[2], 0.5)[:detections]
            return tuple(pad_detections(t[keep], detections) for t in found)

    return TwoStage()


def _two_stage(tmp_path: Path, module, options: Dict[str, str]):
    feed = _proposals(0)
    original = _export(module, list(feed.values()), tmp_path / "two.onnx", ["boxes", "scores"],
                       ["det_boxes", "det_scores", "det_labels"])
    return _patched(original, options)


@pytest.mark.parametrize("seed, small, low", [(0, 0.2, 0.3), (1, 0.0, 0.0), (3, 0.0, 1.0),
                                              (4, 0.5, 0.6)])
def test_rpn_rows_stay_static_and_the_detections_are_torchvisions(tmp_path: Path, seed: int,
                                                                  small: float, low: float) -> None:
    """A two-stage detector: the RPN's plugin rows stay its K (120: more than it keeps), those
    past the kept ones at an empty proposal put in front, which the box head decodes to empty
    boxes that its remove_small_boxes drops; the box head's rows stay its 80, those past the
    kept ones zeroed in the outputs as the padding does; no NonZero is left, and the detections
    (their padding too) are torchvision's: with some candidates filtered, none, and every score
    too low (no proposal: no detection)."""
    module = _two_stage_module(120, 80)  # seed 4 detects 50, seed 3 none: padding
    patched, (rpn, head) = _two_stage(tmp_path, module, {})
    assert len(rpn["static_rows"]) == 1 and "rows_cut" not in rpn, rpn  # boxes[keep]
    # the box head's too: its 15 rows are the graph's outputs, those past the kept ones zeroed
    assert len(head["static_rows"]) == 3 and "rows_cut" not in head, head
    assert sorted(head["zeroed_past_kept"]) == ["det_boxes", "det_labels", "det_scores"]
    assert _ops(patched)["NonZero"] == 0
    feed = _proposals(seed, small, low)
    expected, got = _torch(module, feed), _run(patched, feed)
    assert (np.count_nonzero(expected[1]) == 0) == (low == 1.0)
    assert np.array_equal(got[2], expected[2]) and np.array_equal(got[1] > 0, expected[1] > 0)
    for have, want in zip(got[:2], expected[:2]):  # the box head's arithmetic, ONNX Runtime's
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-4)
    # with the rows cut (policy never): one NonZero more, the same detections (no proposal at
    # all: this graph's Reshape of 0 rows to {0, -1} is refused by ONNX Runtime, which
    # fold_known_dims, not in PASSES, mends in the workflow)
    cut, (rpn, _) = _two_stage(tmp_path, module, {"efficient_nms_static_rows": "never"})
    assert rpn["static_rows"] == [] and rpn["rows_cut"].startswith("policy 'never'")
    assert _ops(cut)["NonZero"] == 2  # the valid rows of both plugins
    for have, want in zip(_run(cut, feed) if low < 1 else got, got):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-4)


def test_rpn_rows_are_cut_where_the_later_nms_keeps_empty_boxes(tmp_path: Path) -> None:
    """A box head without remove_small_boxes would keep what it decodes from an empty proposal:
    the RPN's valid rows are taken out as before, and patch.json says why."""
    _, (rpn, _) = _two_stage(tmp_path, _two_stage_module(120, 80, size_filter=False), {})
    assert rpn["static_rows"] == [] and rpn["rows_cut"] == "a later NMS does not drop empty boxes"


LEVEL_ANCHORS, ONE_STAGE_CLASSES = (60, 24, 9), 5


def _one_stage_module(detections: int = 20):
    """torchvision's RetinaNet.postprocess_detections itself (per level: the scores over 0.05,
    the top min(30, how many) of them, their anchors decoded; then the batched NMS over the
    classes and its first `detections`), on 3 levels of LEVEL_ANCHORS anchors and
    ONE_STAGE_CLASSES classes, padded to 1 x `detections` as the deploy module pads."""
    import torch
    from torchvision.models.detection import retinanet_resnet50_fpn

    from trtflow.detection import pad_detections

    detector = retinanet_resnet50_fpn(weights=None, weights_backbone=None,
                                      num_classes=ONE_STAGE_CLASSES, topk_candidates=30,
                                      detections_per_img=detections).eval()

    class OneStage(torch.nn.Module):
        def forward(self, logits, regression, anchors):
            split = list(LEVEL_ANCHORS)
            head = {"cls_logits": [t[None] for t in logits.split(split)],
                    "bbox_regression": [t[None] for t in regression.split(split)]}
            found = detector.postprocess_detections(head, [list(anchors.split(split))],
                                                    [(320, 320)])[0]
            return tuple(pad_detections(found[k], detections) for k in ("boxes", "scores", "labels"))

    return OneStage()


def _one_stage_feed(seed: int, over: float) -> Dict[str, np.ndarray]:
    """Head outputs for every anchor: logits whose share `over` scores over 0.05 (sigmoid), small
    box regressions, anchors of 8 to 120 pixels over a 320 image."""
    rng = np.random.default_rng(seed)
    count = sum(LEVEL_ANCHORS)
    logits = rng.uniform(-9.0, -4.0, (count, ONE_STAGE_CLASSES)).astype(np.float32)
    lifted = rng.random((count, ONE_STAGE_CLASSES)) < over
    logits[lifted] = rng.uniform(-2.5, 3.0, int(lifted.sum())).astype(np.float32)
    corners = rng.random((count, 2), dtype=np.float32) * 200
    sizes = 8 + rng.random((count, 2), dtype=np.float32) * 112
    return {"logits": logits,
            "regression": (rng.standard_normal((count, 4)) * 0.1).astype(np.float32),
            "anchors": np.concatenate([corners, corners + sizes], 1)}


@pytest.mark.parametrize("seed, over", [(0, 0.3), (1, 0.02), (2, 0.0), (3, 1.0)])
def test_one_stage_topk_filters_fold_and_the_detections_are_torchvisions(
        tmp_path: Path, seed: int, over: float) -> None:
    """RetinaNet's (and FCOS's) filter per level: each level's TopK reads all its scores, those
    not over the threshold moved under it, K a constant, and the plugin's threshold leaves the
    moved ones out; its rows stay static. No NonZero is left, and the detections, padding
    included, are torchvision's: many scores over the threshold (every level fills its 30), a
    few (levels short of 30), none (no detection), all."""
    module = _one_stage_module()
    feed = _one_stage_feed(0, 0.3)
    original = _export(module, list(feed.values()), tmp_path / "one.onnx", list(feed),
                       ["det_boxes", "det_scores", "det_labels"])
    assert _ops(original)["NonZero"] >= 2 * len(LEVEL_ANCHORS)
    patched, (entry,) = _patched(original, {})
    assert len(entry["filters_as_mask"]) == 2 * len(LEVEL_ANCHORS), entry  # 2 NonZero a level
    assert entry["static_rows"] and len(entry["zeroed_past_kept"]) == 3, entry
    assert _ops(patched)["NonZero"] == 0
    feed = _one_stage_feed(seed, over)
    expected, got = _torch(module, feed), _run(patched, feed)
    kept = np.count_nonzero(expected[1])
    assert (kept == 0) == (over == 0.0) and (kept < 20) == (over < 0.05), kept
    assert np.array_equal(got[2], expected[2])  # labels, and so which detections, in order
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)  # ONNX Runtime's sigmoid
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-4)
    if over > 0:  # the same runtime without the fold: equal to the bit (with no score over
        # the threshold the unfolded graph's Reshape of 0 rows is refused, see above)
        for have, want in zip(got, _run(original, feed)):
            assert np.array_equal(have, want)


def test_static_rows_stay_cut_where_the_nms_positions_are_an_output(tmp_path: Path) -> None:
    """A one-stage filter folded (the TopK over all scores), but the NMS's positions are the
    graph's output: rows past the kept ones would read as positions, so they stay cut, and
    patch.json says why; the positions are torchvision's."""
    import torch
    from torchvision.models.detection import _utils as det_utils
    from torchvision.ops import boxes as box_ops

    class Positions(torch.nn.Module):
        def forward(self, boxes, scores):
            keep = scores > 0.05
            kept, where = scores[keep], torch.where(keep)[0]
            values, idxs = kept.topk(det_utils._topk_min(where, 30, 0))
            return _padded(box_ops.nms(boxes[where[idxs]], values, 0.5)[:10], 10)

    feed = _proposals(0)
    model = _export(Positions(), list(feed.values()), tmp_path / "positions.onnx",
                    ["boxes", "scores"], ["keep"])
    patched, (entry,) = _patched(model, {})
    assert len(entry["filters_as_mask"]) == 2 and entry["static_rows"] == [], entry
    assert "graph output" in entry["rows_cut"] or "reads the NMS's selected" in entry["rows_cut"]
    assert np.array_equal(_run(patched, feed)[0], _torch(Positions(), feed)[0])
