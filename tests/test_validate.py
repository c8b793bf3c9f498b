"""trtflow.validate: metrics on known arrays, the tolerance gate, the full comparison."""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
import pytest

from trtflow.validate import (FP16_TINY, GATES, classification_metrics, compare, gate, predictions,
                              reference_problems, tensor_metrics, topk)

FP32 = {"max_abs": 1e-3, "rel_l2": 1e-4, "cosine_min": 0.9999, "top1_agreement_min": 1.0,
        "top5_agreement_min": 0.8}


# --- tensor metrics ----------------------------------------------------------------------------

def test_tensor_metrics_on_known_values() -> None:
    ref = np.array([[3.0, 4.0]])
    out = np.array([[3.0, 4.5]], dtype=np.float32)
    metrics = tensor_metrics(out, ref)
    assert metrics["nonfinite"] == 0
    assert metrics["max_abs"] == pytest.approx(0.5)
    assert metrics["rel_l2"] == pytest.approx(0.5 / 5.0)
    assert metrics["cosine"] == pytest.approx((9 + 18) / (5.0 * math.hypot(3, 4.5)))


def test_tensor_metrics_identical_and_opposite() -> None:
    ref = np.linspace(-1, 1, 10)
    same = tensor_metrics(ref.copy(), ref)
    assert same["max_abs"] == 0 and same["rel_l2"] == 0 and same["cosine"] == pytest.approx(1.0)
    opposite = tensor_metrics(-ref, ref)
    assert opposite["cosine"] == pytest.approx(-1.0) and opposite["rel_l2"] == pytest.approx(2.0)


def test_tensor_metrics_with_a_zero_reference() -> None:
    zeros = np.zeros(4)
    assert tensor_metrics(zeros, zeros) == {"nonfinite": 0, "max_abs": 0.0, "rel_l2": 0.0,
                                            "cosine": 1.0}
    ones = tensor_metrics(np.ones(4), zeros)
    assert ones["rel_l2"] == pytest.approx(2.0)  # the absolute L2 of the difference
    assert ones["cosine"] == 0.0


def test_tensor_metrics_count_nonfinite_values() -> None:
    out = np.array([1.0, np.nan, np.inf, 2.0])
    assert tensor_metrics(out, np.ones(4))["nonfinite"] == 2


# --- classification ----------------------------------------------------------------------------

def test_topk_orders_by_score_and_breaks_ties_by_index() -> None:
    logits = np.array([[0.1, 0.9, 0.5, 0.9], [4, 3, 2, 1]], dtype=np.float32)
    np.testing.assert_array_equal(topk(logits, 2), [[1, 3], [0, 1]])


def test_classification_metrics_agreement() -> None:
    ref = np.tile(np.arange(10, dtype=np.float64), (4, 1))  # top-5 = 9, 8, 7, 6, 5
    out = ref.copy()
    out[0, 0] = 100.0  # sample 0: new top-1, top-5 overlap 4/5
    metrics = classification_metrics(out, ref)
    assert metrics["top1_agreement"] == pytest.approx(0.75)
    assert metrics["top5_agreement"] == pytest.approx((0.8 + 1 + 1 + 1) / 4)


def test_top5_agreement_of_identical_outputs_with_three_classes_is_one() -> None:
    logits = np.random.default_rng(0).normal(size=(4, 3))
    assert classification_metrics(logits, logits.copy())["top5_agreement"] == 1.0


def test_predictions_check_the_expected_imagenet_classes() -> None:
    ref = np.zeros((3, 1000))
    out = np.zeros((3, 1000))
    ref[0, 281], out[0, 281] = 1, 1    # chelsea: tabby cat, both right
    ref[1, 967], out[1, 100] = 1, 1    # coffee: reference espresso, engine wrong
    ref[2, 5], out[2, 5] = 1, 1        # no expected class known
    labels = [f"class{i}" for i in range(1000)]
    rows = predictions(out, ref, ["chelsea", "coffee", "astronaut"], labels, check_expected=True)
    assert rows[0] == {"sample": "chelsea", "reference": "281 class281", "engine": "281 class281",
                       "expected": "a cat class", "reference_ok": True, "engine_ok": True}
    assert rows[1]["reference_ok"] is True and rows[1]["engine_ok"] is False
    assert rows[2] == {"sample": "astronaut", "reference": "5 class5", "engine": "5 class5"}
    unchecked = predictions(out, ref, ["chelsea", "coffee", "x"], None, check_expected=False)
    assert unchecked[1] == {"sample": "coffee", "reference": "967", "engine": "100"}


# --- gate ----------------------------------------------------------------------------------------

def good_metrics() -> Dict[str, float]:
    return {"nonfinite": 0, "max_abs": 1e-5, "rel_l2": 1e-6, "cosine": 1.0, "top1_agreement": 1.0,
            "top5_agreement": 1.0}


def test_gate_passes_metrics_within_all_bounds() -> None:
    assert gate(good_metrics(), FP32, "output 'logits'") == []


def test_gate_fails_on_nan_values() -> None:
    metrics = tensor_metrics(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    failures = gate(metrics, FP32, "output 'logits'")
    assert failures == ["output 'logits': 1 NaN/Inf values",
                        "output 'logits': max_abs = nan is above the allowed 0.001",
                        "output 'logits': rel_l2 = nan is above the allowed 0.0001",
                        "output 'logits': cosine = 0 is below the required 0.9999"]


def test_gate_fails_on_a_nan_metric_even_without_nonfinite_outputs() -> None:
    # every comparison with NaN is False: the gate must not read that as "within bounds"
    assert gate({"max_abs": float("nan")}, {"max_abs": 1e-3}, "o") == [
        "o: max_abs = nan is above the allowed 0.001"]
    assert gate({"cosine": float("nan")}, {"cosine_min": 0.9}, "o") == [
        "o: cosine = nan is below the required 0.9"]


@pytest.mark.parametrize("metric, value, expected", [
    ("max_abs", 0.01, "output 'y': max_abs = 0.01 is above the allowed 0.001"),
    ("rel_l2", 0.002, "output 'y': rel_l2 = 0.002 is above the allowed 0.0001"),
    ("cosine", 0.99, "output 'y': cosine = 0.99 is below the required 0.9999"),
    ("top1_agreement", 0.5, "output 'y': top1_agreement = 0.5 is below the required 1"),
    ("top5_agreement", 0.6, "output 'y': top5_agreement = 0.6 is below the required 0.8"),
])
def test_gate_fails_on_each_metric_bound(metric: str, value: float, expected: str) -> None:
    metrics = dict(good_metrics(), **{metric: value})
    assert gate(metrics, FP32, "output 'y'") == [expected]
    # without that tolerance, the same metric is not gated
    key = GATES[metric][1]
    assert gate(metrics, {k: v for k, v in FP32.items() if k != key}, "output 'y'") == []


def test_gate_bounds_are_inclusive() -> None:
    metrics = dict(good_metrics(), rel_l2=1e-4, cosine=0.9999)
    assert gate(metrics, FP32, "o") == []


# --- compare -----------------------------------------------------------------------------------

def test_compare_passes_close_outputs_and_records_everything() -> None:
    rng = np.random.default_rng(0)
    ref = {"logits": rng.normal(size=(4, 10)).astype(np.float32)}
    out = {"logits": ref["logits"] + np.float32(1e-7)}
    result = compare(out, ref, "classification", FP32, ["a", "b", "c", "d"])
    assert result["passed"] is True and result["failures"] == []
    assert set(result["outputs"]["logits"]) == {"nonfinite", "max_abs", "rel_l2", "cosine",
                                                "top1_agreement", "top5_agreement",
                                                "top1_decided_samples"}
    assert [row["sample"] for row in result["predictions"]] == ["a", "b", "c", "d"]
    assert result["tolerances"] == FP32


def test_compare_fails_on_a_shape_mismatch() -> None:
    result = compare({"y": np.zeros((2, 3))}, {"y": np.zeros((2, 4))}, "generic", {}, ["a", "b"])
    assert result["passed"] is False
    assert result["failures"] == ["output 'y': shape [2, 3] vs reference [2, 4]"]


def test_compare_generic_task_has_no_classification_metrics() -> None:
    ref = {"y": np.ones((2, 5))}
    result = compare({"y": ref["y"] * 1.5}, ref, "generic", {"rel_l2": 0.1}, ["a", "b"])
    assert "top1_agreement" not in result["outputs"]["y"] and result["predictions"] == []
    assert result["failures"] == ["output 'y': rel_l2 = 0.5 is above the allowed 0.1"]


def test_compare_fails_when_the_engine_misses_an_expected_class() -> None:
    ref = np.zeros((1, 1000))
    ref[0, 967] = 5.0
    out = ref.copy()
    out[0, 100] = 6.0
    result = compare({"logits": out}, {"logits": ref}, "classification", {}, ["coffee"],
                     check_expected=True)
    assert result["passed"] is False
    assert result["failures"] == ["sample 'coffee' should be espresso: reference says 967, "
                                  "engine says 100"]


def test_segmentation_metrics_on_known_masks() -> None:
    """2 classes on a 2x2 image: the engine gets 1 of the 4 pixels wrong."""
    import numpy as np

    from trtflow.validate import segmentation_metrics

    reference = np.zeros((1, 2, 2, 2), dtype=np.float32)
    reference[0, 1, 0, :] = 1.0          # top row class 1, bottom row class 0
    engine = reference.copy()
    engine[0, 1, 1, 0] = 2.0             # one bottom pixel becomes class 1
    metrics = segmentation_metrics(engine, reference)
    assert metrics["pixel_agreement"] == 0.75
    # class 0: 1 shared pixel of 2 in the union; class 1: 2 of 3
    assert abs(metrics["miou"] - (1 / 2 + 2 / 3) / 2) < 1e-12


def test_segmentation_gates_fail_on_low_pixel_agreement() -> None:
    import numpy as np

    from trtflow.validate import compare

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((2, 5, 8, 8)).astype(np.float32)
    result = compare({"out": -reference}, {"out": reference}, "segmentation",
                     {"pixel_agreement_min": 0.9, "miou_min": 0.5}, ["a", "b"])
    assert not result["passed"]
    assert any("pixel_agreement" in f for f in result["failures"])
    assert any("miou" in f for f in result["failures"])


def _detections(rows):
    """One image: rows of (label, x1, y1, x2, y2, score) -> (labels, boxes, scores) arrays."""
    import numpy as np

    table = np.array(rows, dtype=np.float64)
    return (table[None, :, 0].astype(np.int32), table[None, :, 1:5].astype(np.float32),
            table[None, :, 5].astype(np.float32))


def test_detections_match_despite_reordering() -> None:
    from trtflow.validate import detection_metrics

    reference = _detections([(1, 0, 0, 10, 10, 0.9), (2, 20, 20, 40, 40, 0.8), (3, 0, 0, 5, 5, 0.1)])
    engine = _detections([(2, 21, 20, 40, 41, 0.79), (1, 0, 0, 10, 10, 0.91), (5, 50, 50, 60, 60, 0.2)])
    metrics = detection_metrics(engine, reference)
    assert metrics["reference_detections"] == 2 and metrics["engine_detections"] == 2
    assert metrics["detection_recall"] == 1.0 and metrics["detection_precision"] == 1.0
    assert 0.85 < metrics["matched_box_iou"] < 1.0
    assert abs(metrics["max_score_diff"] - 0.01) < 1e-6


def test_a_score_crossing_the_threshold_a_little_is_drift_not_a_lost_detection() -> None:
    """fp16 moves a score of 0.31 to 0.29: same class, same box. Within the band below the
    threshold it is counted as a crossing and in max_score_diff; far below (or with a hard
    threshold) it is lost, both ways round."""
    from trtflow.validate import detection_metrics

    reference = _detections([(1, 0, 0, 10, 10, 0.31), (2, 20, 20, 40, 40, 0.8), (3, 50, 50, 60, 60, 0.28)])
    engine = _detections([(1, 0, 0, 10, 10, 0.29), (2, 20, 20, 40, 40, 0.1), (3, 50, 50, 60, 60, 0.33)])
    metrics = detection_metrics(engine, reference, min_score=0.3)
    # reference 1 (0.31 -> 0.29) is reproduced; reference 2 (0.8 -> 0.1, below 0.15) is lost
    assert metrics["detection_recall"] == 0.5
    # the engine's confident 3 (0.33) is confirmed by the reference's 0.28
    assert metrics["detection_precision"] == 1.0
    assert metrics["threshold_crossings"] == 2
    assert metrics["max_score_diff"] == pytest.approx(0.02)
    hard = detection_metrics(engine, reference, min_score=0.3, match_fraction=1.0)
    assert hard["detection_recall"] == 0.0 and hard["detection_precision"] == 0.0
    assert hard["threshold_crossings"] == 0


def test_detection_of_another_class_or_place_does_not_match() -> None:
    from trtflow.validate import compare

    reference = _detections([(1, 0, 0, 10, 10, 0.9), (2, 20, 20, 40, 40, 0.8)])
    engine = _detections([(7, 0, 0, 10, 10, 0.9), (2, 60, 60, 80, 80, 0.8)])  # wrong class, wrong box
    names = ("labels", "boxes", "scores")
    result = compare(dict(zip(names, engine)), dict(zip(names, reference)), "detection",
                     {"detection_recall_min": 0.9, "rel_l2": 1e-9}, ["img"])
    assert not result["passed"]
    assert result["detections"]["detection_recall"] == 0.0
    assert any("detection_recall" in f for f in result["failures"])
    assert not any("rel_l2" in f for f in result["failures"])  # tensors are not gated element-wise


def test_a_failed_detection_check_names_the_lost_detections() -> None:
    from trtflow.validate import compare

    reference = _detections([(1, 0, 0, 10, 10, 0.9), (2, 20, 20, 40, 40, 0.6), (3, 50, 50, 60, 60, 0.7)])
    # the second detection changed class (a near-tie between classes), the third lost 0.3 of score
    engine = _detections([(1, 0, 0, 10, 10, 0.9), (3, 20, 20, 40, 40, 0.55), (3, 50, 50, 60, 60, 0.4)])
    names = ("labels", "boxes", "scores")
    result = compare(dict(zip(names, engine)), dict(zip(names, reference)), "detection",
                     {"detection_recall_min": 0.9}, ["img"], detection_min_score=0.3)
    lost, worst = result["mismatches"]
    assert lost == {"kind": "lost", "sample": 0, "reference_label": 2, "reference_score": 0.6,
                    "reference_box": [20.0, 20.0, 40.0, 40.0], "nearest_engine_label": 3,
                    "nearest_engine_score": 0.55, "nearest_engine_iou": 1.0}
    assert worst["kind"] == "largest_score_diff" and worst["label"] == 3
    assert (worst["reference_score"], worst["engine_score"]) == (0.7, 0.4)


def test_masks_and_keypoints_are_compared_on_matched_detections() -> None:
    """Engine detections in another order: masks and keypoints follow their detection's match."""
    reference = _detections([(1, 0, 0, 10, 10, 0.9), (2, 20, 20, 40, 40, 0.8)])
    engine = _detections([(2, 20, 20, 40, 40, 0.8), (1, 0, 0, 10, 10, 0.9)])
    masks_ref = np.zeros((1, 2, 4, 4), np.float32)
    masks_ref[0, 0, :2] = 1.0  # top half
    masks_ref[0, 1, :, :2] = 1.0  # left half
    masks_out = masks_ref[:, ::-1].copy()  # same masks, engine order
    masks_out[0, 1, 0] = 0.0  # first detection's mask loses one of its two rows: IoU 0.5
    keypoints_ref = np.zeros((1, 2, 3, 3), np.float32)
    keypoints_ref[0, 0, :, :2] = [[1, 1], [5, 5], [9, 9]]
    keypoints_ref[0, 1, :, :2] = [[25, 25], [30, 30], [35, 35]]
    keypoints_out = keypoints_ref[:, ::-1].copy()
    keypoints_out[0, 0, 0, 0] += 2.0  # second detection (box 20 x 20): one keypoint 2 px off
    names = ("labels", "boxes", "scores", "masks", "keypoints")
    result = compare(dict(zip(names, (*engine, masks_out, keypoints_out))),
                     dict(zip(names, (*reference, masks_ref, keypoints_ref))), "detection",
                     {"mask_iou_min": 0.8, "keypoint_distance_max": 0.05}, ["img"])
    detections = result["detections"]
    assert detections["matched_masks"] == 2 and detections["mask_iou"] == pytest.approx(0.75)
    assert detections["min_mask_iou"] == pytest.approx(0.5)
    assert detections["keypoint_distance"] == pytest.approx(2.0 / 20 / 6)
    assert detections["max_keypoint_distance_px"] == pytest.approx(2.0)
    assert result["failures"] == ["detections: mask_iou = 0.75 is below the required 0.8"]


def test_masks_and_keypoints_of_no_matched_detection_gate_nothing() -> None:
    """An engine whose detections match none of the reference's has no mask IoU and no keypoint
    distance: a perfect value there would pass a mask or keypoint gate (as a Mask R-CNN int8
    engine's mask_iou of 1.0 at recall 0 read in benchmarks/gpu/detectors.csv). With only those
    gates asked for, nothing was checked."""
    reference = _detections([(1, 0, 0, 10, 10, 0.9), (2, 20, 20, 40, 40, 0.8)])
    engine = _detections([(3, 50, 50, 60, 60, 0.9), (3, 70, 70, 80, 80, 0.8)])
    masks = np.ones((1, 2, 4, 4), np.float32)
    keypoints = np.zeros((1, 2, 3, 3), np.float32)
    names = ("labels", "boxes", "scores", "masks", "keypoints")
    result = compare(dict(zip(names, (*engine, masks, keypoints))),
                     dict(zip(names, (*reference, masks, keypoints))), "detection",
                     {"mask_iou_min": 0.8, "keypoint_distance_max": 0.05}, ["img"])
    detections = result["detections"]
    assert detections["matched_masks"] == 0 and detections["matched_keypoint_sets"] == 0
    assert "mask_iou" not in detections and "keypoint_distance" not in detections
    assert result["verdict"] != "passed" and not result["passed"]


def test_masks_are_compared_where_they_lie_in_the_image() -> None:
    """An engine box twice as wide, its mask the left half of it: the same pixels of the image
    as the reference's full mask of the narrow box (box-relative, the masks would differ)."""
    from trtflow.validate import mask_metrics

    ref_boxes = np.array([[[0, 0, 8, 8]]], np.float32)
    boxes = np.array([[[0, 0, 16, 8]]], np.float32)
    ref_masks = np.ones((1, 1, 4, 4), np.float32)
    masks = np.zeros((1, 1, 4, 4), np.float32)
    masks[..., :2] = 1.0
    same = mask_metrics(masks, ref_masks, boxes, ref_boxes, [(0, 0, 0)])
    assert same["mask_iou"] == pytest.approx(1.0)
    masks[..., :1] = 0.0  # now only x in [4, 8): half the reference's pixels
    half = mask_metrics(masks, ref_masks, boxes, ref_boxes, [(0, 0, 0)])
    assert half["mask_iou"] == pytest.approx(0.5)


def test_detection_validation_with_no_confident_reference_detection_is_vacuous() -> None:
    """A pass that compared nothing would prove nothing: say what to change instead."""
    reference = _detections([(1, 0, 0, 10, 10, 0.05)])
    names = ("labels", "boxes", "scores")
    result = compare(dict(zip(names, reference)), dict(zip(names, reference)), "detection",
                     {"detection_recall_min": 0.9}, ["img"], detection_min_score=0.3)
    assert result["verdict"] == "vacuous" and not result["passed"]
    assert "lower validation.detection_min_score" in result["reference_problems"][0]


def _images(*images):
    """Several images' detections, each a list of rows as _detections takes them."""
    parts = [_detections(rows) for rows in images]
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))


def test_detection_with_only_classification_gates_is_unchecked_not_passed() -> None:
    """Gates that measure nothing of this task (rel_l2 on detections) check nothing."""
    reference = _images([(1, 0, 0, 10, 10, 0.9), (2, 20, 20, 40, 40, 0.8)],
                        [(3, 50, 50, 90, 90, 0.9), (3, 0, 0, 30, 30, 0.8)])
    engine = _images([(1, 0, 0, 10, 10, 0.9), (0, 0, 0, 0, 0, 0.0)],  # padding row
                     [(3, 50, 50, 90, 90, 0.9), (3, 0, 0, 30, 30, 0.8)])
    names = ("labels", "boxes", "scores")
    result = compare(dict(zip(names, engine)), dict(zip(names, reference)), "detection",
                     {"rel_l2": 1e-4, "top1_agreement_min": 1.0}, ["a", "b"])
    assert result["verdict"] == "unchecked" and result["gates"] == []
    gated = compare(dict(zip(names, engine)), dict(zip(names, reference)), "detection",
                    {"detection_recall_min": 0.9}, ["a", "b"])
    assert gated["verdict"] == "failed"
    assert any("detection_recall = 0.75" in f for f in gated["failures"])


# --- verdicts: what the reference can prove, and which gates applied ---------------------------



def _logits(seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(4, 10)).astype(np.float32) * scale


MEAN_NULL = "passes every gate: one that returns the reference's mean over the samples for every sample"


@pytest.mark.parametrize("reference,precision,needle", [
    (np.zeros((4, 10), np.float32), "fp32", MEAN_NULL),
    (np.full((4, 10), 0.5, np.float32), "fp32", MEAN_NULL),
    (np.tile(_logits()[:1], (4, 1)), "fp32", MEAN_NULL),
    (np.where(np.eye(4, 10) > 0, np.nan, _logits()).astype(np.float32), "fp32", "output 'logits' has 4 NaN/Inf"),
    (_logits(scale=1e-13), "fp16", "output 'logits' peaks at |x| = "),
])
def test_a_reference_that_cannot_tell_engines_apart_is_vacuous(reference, precision, needle) -> None:
    result = compare({"logits": reference.copy()}, {"logits": reference}, "classification",
                     {"rel_l2": 1e-4, "cosine_min": 0.999}, [f"s{i}" for i in range(4)],
                     precision=precision)
    assert result["verdict"] == "vacuous" and not result["passed"]
    assert needle in result["reference_problems"][0]


def _near_constant_logits(samples: int = 8, spread: float = 1e-5) -> np.ndarray:
    """A random-weight classifier as issue 22 met them: one logit vector for every input, the
    input's part 1e-5 of it (every argmax the same class)."""
    rng = np.random.default_rng(3)
    common = rng.normal(size=(1, 1000)) * 3.0
    return (common + spread * 3.0 * rng.normal(size=(samples, 1000))).astype(np.float32)


BUILTIN_CLASSIFICATION = {
    "fp32": {"rel_l2": 1.0e-4, "cosine_min": 0.99999, "top1_agreement_min": 1.0},
    "fp16": {"rel_l2": 1.0e-2, "cosine_min": 0.9999, "top1_agreement_min": 1.0},
    "int8": {"rel_l2": 0.25, "cosine_min": 0.97, "top1_agreement_min": 0.75, "top5_agreement_min": 0.6},
}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_an_engine_as_good_as_one_that_ignores_its_input_is_vacuous(precision: str) -> None:
    """The engine reproduces the reference exactly, but a null engine that returns the mean of
    the reference for every sample passes the same gates: the cell proves nothing (issue 22).
    The old exact-constant checks let this pass."""
    reference = _near_constant_logits()
    names = [f"s{i}" for i in range(8)]
    result = compare({"logits": reference.copy()}, {"logits": reference}, "classification",
                     BUILTIN_CLASSIFICATION[precision], names, precision=precision)
    assert result["verdict"] == "vacuous", result
    assert result["reference_problems"][0].startswith(
        "the gates cannot tell this engine from one that ignores its input: a null engine " + MEAN_NULL)
    assert "fix: use trained weights" in result["reference_problems"][0]
    mean = result["nulls"]["mean"]
    assert mean["passes_every_gate"] and mean["failures"] == []
    assert mean["outputs"]["logits"]["rel_l2"] < 1e-4
    # the logits' leads are far inside what int8's rel. L2 gate allows: no sample's top-1 is
    # decided there, so top-1 gates nothing; in fp32/fp16 the null agrees on every sample
    assert mean["outputs"]["logits"].get("top1_agreement", 1.0) == 1.0
    assert ("top1_agreement" in mean["outputs"]["logits"]) == (precision != "int8")
    # the same check with outputs that depend on the input: every null fails, the engine passes
    informative = _near_constant_logits(spread=1.0)
    passed = compare({"logits": informative.copy()}, {"logits": informative}, "classification",
                     BUILTIN_CLASSIFICATION[precision], names, precision=precision)
    assert passed["verdict"] == "passed", passed
    assert set(passed["nulls"]) == {"mean", "rolled"}
    assert not any(null["passes_every_gate"] for null in passed["nulls"].values())


def test_top1_counts_the_samples_whose_lead_the_rel_l2_gate_cannot_flip() -> None:
    """A random-weight ResNet-18's logits (1000 classes, unit spread): int8 (rel. L2 0.054,
    cosine 0.9986) flips the top-1 of the three samples whose leads are 0.03-0.09 of the rms,
    which the rel. L2 gate of 0.25 lets change by 0.35; the samples that lead by more agree.
    Without a rel. L2 gate every sample counts."""
    reference = np.zeros((4, 1000))
    reference[:, :3] = [[3.0, 2.97, 0.0], [3.0, 1.0, 0.0], [3.0, 2.9, 0.0], [0.0, 3.0, 1.0]]
    engine = reference.copy()
    engine[0, :2] = [2.97, 3.0]  # a close call flipped
    engine[3, :2] = [3.0, 0.0]  # a decided sample flipped
    rms = float(np.sqrt(np.mean(reference ** 2)))
    decided = compare({"y": engine}, {"y": reference}, "classification",
                      {"rel_l2": 0.1 / rms, "top1_agreement_min": 0.75}, list("abcd"))
    metrics = decided["outputs"]["y"]
    assert metrics["top1_decided_samples"] == 2  # leads 2.0 and 2.0 > sqrt(2) x 0.1; 0.03, 0.1 not
    assert metrics["top1_agreement"] == 0.5 and not decided["passed"]
    strict = compare({"y": engine}, {"y": reference}, "classification",
                     {"top1_agreement_min": 0.75}, list("abcd"))["outputs"]["y"]
    assert strict["top1_decided_samples"] == 4 and strict["top1_agreement"] == 0.5


def test_a_null_engine_is_judged_by_the_cells_own_gates_only() -> None:
    """With only a top-1 gate, an output whose argmax is one class for every sample is vacuous,
    though its logits differ a lot; a rel_l2 gate tells the engines apart again."""
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(6, 10)).astype(np.float32)
    reference[:, 4] += 20.0  # class 4 wins everywhere
    names = [f"s{i}" for i in range(6)]
    top1 = compare({"logits": reference.copy()}, {"logits": reference}, "classification",
                   {"top1_agreement_min": 1.0}, names)
    assert top1["verdict"] == "vacuous" and top1["nulls"]["rolled"]["passes_every_gate"]
    both = compare({"logits": reference.copy()}, {"logits": reference}, "classification",
                   {"top1_agreement_min": 1.0, "rel_l2": 0.01}, names)
    assert both["verdict"] == "passed"
    assert "rel_l2" in both["nulls"]["mean"]["failures"][0]


def test_a_one_class_segmenter_is_vacuous() -> None:
    """Every reference pixel one class: pixel agreement and mIoU are 1.0 for the null that
    predicts that class everywhere; with a second class in the reference they are not."""
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(3, 4, 8, 8)).astype(np.float32)
    reference[:, 2] += 10.0
    names = ["a", "b", "c"]
    gates = {"pixel_agreement_min": 0.9, "miou_min": 0.7}
    result = compare({"out": reference.copy()}, {"out": reference}, "segmentation", gates, names)
    assert result["verdict"] == "vacuous"
    majority = result["nulls"]["majority_class"]
    assert majority["passes_every_gate"]
    assert majority["outputs"]["out"]["pixel_agreement"] == 1.0
    two_classes = reference.copy()
    two_classes[0, 1, :, :4] += 30.0  # class 1 in another half of each image
    two_classes[1, 1, :4, :] += 30.0
    two_classes[2, 1, :, 4:] += 30.0
    mixed = compare({"out": two_classes.copy()}, {"out": two_classes}, "segmentation", gates, names)
    assert mixed["verdict"] == "passed", mixed["reference_problems"]
    assert not any(null["passes_every_gate"] for null in mixed["nulls"].values())
    assert mixed["nulls"]["majority_class"]["outputs"]["out"]["pixel_agreement"] == pytest.approx(0.5)


def test_a_detector_that_finds_the_same_on_every_image_is_vacuous() -> None:
    """The null that returns another image's detections is reproduced when every image gets
    the same ones (a random head firing at fixed anchors); not when the images differ."""
    same = _images(*[[(1, 0, 0, 10, 10, 0.9), (2, 20, 20, 40, 40, 0.8)]] * 3)
    names = ("labels", "boxes", "scores")
    gates = {"detection_recall_min": 0.9, "box_iou_min": 0.9}
    result = compare(dict(zip(names, same)), dict(zip(names, same)), "detection", gates,
                     ["a", "b", "c"])
    assert result["verdict"] == "vacuous"
    assert set(result["nulls"]) == {"rolled"} and result["nulls"]["rolled"]["detections"]["detection_recall"] == 1.0
    assert "the next sample" in result["reference_problems"][0]
    varied = _images([(1, 0, 0, 10, 10, 0.9)], [(2, 20, 20, 40, 40, 0.8)], [(1, 50, 50, 70, 70, 0.7)])
    passed = compare(dict(zip(names, varied)), dict(zip(names, varied)), "detection", gates,
                     ["a", "b", "c"])
    assert passed["verdict"] == "passed"
    assert passed["nulls"]["rolled"]["detections"]["detection_recall"] == 0.0


def test_one_validation_sample_cannot_tell_an_engine_from_a_null() -> None:
    reference = _logits()[:1]
    result = compare({"logits": reference.copy()}, {"logits": reference}, "classification",
                     {"rel_l2": 1e-4}, ["only"])
    assert result["verdict"] == "vacuous"
    assert "set validation.num_samples to 2 or more" in result["reference_problems"][0]


def test_tiny_outputs_are_vacuous_only_for_fp16() -> None:
    tiny = _logits(scale=1e-13)
    assert np.abs(tiny).max() < FP16_TINY
    assert reference_problems({"logits": tiny}, "fp32") == []
    result = compare({"logits": tiny * (1 + 1e-7)}, {"logits": tiny}, "classification",
                     {"rel_l2": 1e-4}, ["a", "b", "c", "d"], precision="fp32")
    assert result["verdict"] == "passed"


def test_integer_outputs_are_not_checked_for_spread() -> None:
    assert reference_problems({"labels": np.zeros((2, 5), np.int32)}, "fp16") == []


def test_no_applicable_gate_is_unchecked_and_a_broken_engine_still_fails() -> None:
    reference = _logits()
    names = ["a", "b", "c", "d"]
    unchecked = compare({"logits": reference * 2}, {"logits": reference}, "classification", {}, names)
    assert unchecked["verdict"] == "unchecked" and unchecked["gates"] == []
    nan = reference.copy()
    nan[0, 0] = np.nan
    failed = compare({"logits": nan}, {"logits": reference}, "classification", {}, names)
    assert failed["verdict"] == "failed" and "NaN/Inf" in failed["failures"][0]
    passed = compare({"logits": reference}, {"logits": reference}, "generic", {"rel_l2": 1e-6}, names)
    assert passed["verdict"] == "passed" and passed["gates"] == ["rel_l2"]


def test_boxes_clipped_flat_at_the_border_match_when_they_are_the_same() -> None:
    """Zero-width boxes (x1 == x2 == image width) from engine and reference are one detection."""
    from trtflow.validate import box_iou

    flat = np.array([640.0, 10.0, 640.0, 50.0])
    others = np.array([[640.0, 10.0, 640.0, 50.0],     # the same
                       [640.0, 30.0, 640.0, 70.0],     # same line, half overlapping: 20 / 60
                       [600.0, 10.0, 600.0, 50.0],     # another line
                       [630.0, 10.0, 640.0, 50.0]])    # a real box: no overlap in area
    assert np.allclose(box_iou(flat, others), [1.0, 1 / 3, 0.0, 0.0])
    point = np.array([5.0, 5.0, 5.0, 5.0])
    assert np.allclose(box_iou(point, np.array([[5.0, 5.0, 5.0, 5.0], [5.0, 6.0, 5.0, 6.0]])),
                       [1.0, 0.0])
    # boxes with area are unchanged
    assert np.allclose(box_iou(np.array([0.0, 0.0, 2.0, 2.0]), np.array([[1.0, 0.0, 3.0, 2.0]])),
                       [1 / 3])
