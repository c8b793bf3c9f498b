"""Validation stage: engine outputs against the PyTorch reference (numpy only).

Metrics per output: max-abs, relative L2, cosine; for classification also top-1/top-5 agreement
and, for models with real ImageNet weights, the predicted class of the sample photos whose subject
is an ImageNet class; for segmentation (N x classes x H x W logits) pixel agreement and mIoU; for
detection, detections matched by class and IoU, then masks by IoU and keypoints by distance.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .data import EXPECTED_IMAGENET_CLASSES

# metric name -> (direction, tolerance key): "max" means the metric must not exceed the tolerance
GATES = {"max_abs": ("max", "max_abs"), "rel_l2": ("max", "rel_l2"),
         "cosine": ("min", "cosine_min"), "top1_agreement": ("min", "top1_agreement_min"),
         "top5_agreement": ("min", "top5_agreement_min"),
         "pixel_agreement": ("min", "pixel_agreement_min"), "miou": ("min", "miou_min"),
         "detection_recall": ("min", "detection_recall_min"),
         "detection_precision": ("min", "detection_precision_min"),
         "matched_box_iou": ("min", "box_iou_min"), "max_score_diff": ("max", "score_diff_max"),
         "mask_iou": ("min", "mask_iou_min"), "keypoint_distance": ("max", "keypoint_distance_max")}
# Detections the reference is at least this sure of are the ones an engine must reproduce.
DETECTION_MIN_SCORE = 0.3
DETECTION_MATCH_IOU = 0.5
# An engine detection reproduces a confident reference detection down to this fraction of
# the confidence threshold (and vice versa): fp16 moves scores near the threshold across it.
DETECTION_MATCH_FRACTION = 0.5
# What a cell ends in. Only "passed" means an engine was compared against a meaningful reference
# under at least one gate; the run fails (validation.on_failure: fail) for these:
VERDICTS = ("passed", "failed", "vacuous", "unchecked", "error")
FAILING_VERDICTS = ("failed", "vacuous", "error")
# float16's smallest normal number: a reference whose every value is below it cannot be told
# apart from zero by an fp16 engine
FP16_TINY = float(np.finfo(np.float16).tiny)
VACUOUS_FIX = ("use trained weights (weights: {path: ...}), or inputs the model tells apart "
               "(data: imagenet_samples, photos or shapes, or more validation.num_samples); for "
               "random weights, an initialisation whose outputs depend on the input")
# The null engines every cell is also gated as (null_predictions): engines that ignore their
# input. If one passes every gate, the gates cannot tell the cell's engine from it.
NULL_ENGINES = {
    "mean": "returns the reference's mean over the samples for every sample",
    "rolled": "returns each sample's reference output for the next sample (the samples rolled by one)",
    "majority_class": "predicts the reference's most common class at every pixel",
}


def reference_problems(reference: Mapping[str, np.ndarray], precision: str,
                       names: Optional[Sequence[str]] = None) -> List[str]:
    """What makes a reference unusable whatever the gates, per float output: empty, non-finite,
    or (fp16) below float16's normal range. A reference that hardly depends on its input (zero,
    constant, the same for every sample) is found by the null engines instead (null_results)."""
    problems = []
    for name in names or list(reference):
        ref = np.asarray(reference[name])
        if not np.issubdtype(ref.dtype, np.floating):
            continue
        values = ref.astype(np.float64)
        if values.size == 0:
            problems.append(f"output '{name}' is empty")
        elif not np.all(np.isfinite(values)):
            problems.append(f"output '{name}' has {int(np.count_nonzero(~np.isfinite(values)))} "
                            "NaN/Inf values in the reference")
        elif precision == "fp16" and 0 < float(np.max(np.abs(values))) < FP16_TINY:
            problems.append(f"output '{name}' peaks at |x| = {float(np.max(np.abs(values))):.3g} "
                            f"in the reference, below float16's smallest normal number "
                            f"{FP16_TINY:.3g}: an fp16 engine cannot represent it")
    return problems


def verdict(failures: Sequence[str], gates: Sequence[str], problems: Sequence[str]) -> str:
    """vacuous (nothing meaningful to compare against), failed, unchecked (no gate applied: the
    tolerances opted out of every one) or passed."""
    if problems:
        return "vacuous"
    if failures:
        return "failed"
    return "passed" if gates else "unchecked"


def tensor_metrics(out: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    out64 = np.asarray(out, dtype=np.float64).ravel()
    ref64 = np.asarray(ref, dtype=np.float64).ravel()
    nonfinite = int(np.count_nonzero(~np.isfinite(out64)))
    diff = out64 - ref64
    ref_norm = float(np.linalg.norm(ref64))
    out_norm = float(np.linalg.norm(out64))
    return {
        "nonfinite": nonfinite,
        "max_abs": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "rel_l2": float(np.linalg.norm(diff) / ref_norm) if ref_norm > 0 else float(np.linalg.norm(diff)),
        "cosine": float(out64 @ ref64 / (out_norm * ref_norm)) if out_norm * ref_norm > 0 else
        float(out_norm == ref_norm),
    }


def topk(logits: np.ndarray, k: int) -> np.ndarray:
    flat = logits.reshape(logits.shape[0], -1)
    return np.argsort(-flat, axis=1, kind="stable")[:, :k]


def decided_samples(ref: np.ndarray, rel_l2_allowed: Optional[float]) -> np.ndarray:
    """The samples whose reference top-1 leads its runner-up by more than the rel. L2 gate lets
    the difference of two logits change: sqrt(2) x rel_l2 x the reference's rms, the typical
    error of each of two logits the gate accepts. A flip of a closer call is within what that
    gate passes (a random-weight head over 1000 classes has leads of 0.03-0.4 of its rms, and
    int8's 5 % error flips the close ones on one CPU's kernels and not on another's); without
    a rel. L2 gate every sample counts."""
    flat = ref.reshape(ref.shape[0], -1).astype(np.float64)
    if not rel_l2_allowed or flat.shape[1] < 2:
        return np.ones(flat.shape[0], dtype=bool)
    ranked = np.sort(flat, axis=1)
    lead = ranked[:, -1] - ranked[:, -2]
    return lead > np.sqrt(2.0) * rel_l2_allowed * float(np.sqrt(np.mean(flat ** 2)))


def classification_metrics(out: np.ndarray, ref: np.ndarray,
                           rel_l2_allowed: Optional[float] = None) -> Dict[str, Any]:
    """top-1 agreement over the decided samples (decided_samples; absent where none is, so that
    it gates nothing), their count, and the top-5 overlap over all samples."""
    top5_out, top5_ref = topk(out, 5), topk(ref, 5)
    width = top5_ref.shape[1]  # fewer than 5 classes: compare all of them
    decided = decided_samples(ref, rel_l2_allowed)
    overlap = [len(set(a) & set(b)) / width for a, b in zip(top5_out, top5_ref)]
    metrics: Dict[str, Any] = {"top5_agreement": float(np.mean(overlap)),
                               "top1_decided_samples": int(np.count_nonzero(decided))}
    if decided.any():
        metrics["top1_agreement"] = float(np.mean(top5_out[decided, 0] == top5_ref[decided, 0]))
    return metrics


def binary_iou(ours: np.ndarray, theirs: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree (1.0)."""
    union = np.count_nonzero(ours | theirs)
    return np.count_nonzero(ours & theirs) / union if union else 1.0


def segmentation_metrics(out: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    """Per-pixel class (argmax over axis 1) of engine vs reference: the share of pixels that
    agree, and the mean IoU over the classes the reference predicts."""
    predicted, expected = out.argmax(axis=1), ref.argmax(axis=1)
    ious = [binary_iou(predicted == label, expected == label) for label in np.unique(expected)]
    return {"pixel_agreement": float(np.mean(predicted == expected)), "miou": float(np.mean(ious))}


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `boxes` (K x 4)."""
    low = np.maximum(box[:2], boxes[:, :2])
    high = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    union = area(box) + area(boxes) - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    flat = union <= 0
    return np.where(flat, _flat_box_iou(box, boxes), iou) if flat.any() else iou


def _flat_box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU where both boxes have zero area (a detection clipped flat at the image border, which
    engine and reference both return): per axis, the overlap of the two extents where they have
    any, and whether they lie on the same line where neither has (fp16 coordinates: 1e-3)."""
    result = np.ones(len(boxes))
    for axis in (0, 1):
        low, high = boxes[:, axis], boxes[:, axis + 2]
        if box[axis + 2] - box[axis] <= 0:
            same_line = (high - low <= 0) & np.isclose(low, box[axis], rtol=1e-3, atol=1e-3)
            result *= same_line
            continue
        overlap = np.clip(np.minimum(box[axis + 2], high) - np.maximum(box[axis], low), 0, None)
        span = np.maximum(box[axis + 2], high) - np.minimum(box[axis], low)
        result *= overlap / span
    return result


Pair = Tuple[int, int, int]  # (image, reference detection, engine detection)


def _greedy_matches(labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                    other_labels: np.ndarray, other_boxes: np.ndarray, other_scores: np.ndarray,
                    min_score: float, other_min_score: float,
                    match_iou: float) -> List[Tuple[int, int, int, float]]:
    """Each detection of one side at score >= min_score, most confident first, matched to the
    unmatched detection of the other side of the same class with the highest IoU (>= match_iou)
    among those at score >= other_min_score: (image, index, other index, IoU) per match."""
    matches = []
    for image in range(labels.shape[0]):
        candidates = np.flatnonzero(other_scores[image] >= other_min_score)
        used = np.zeros(len(candidates), dtype=bool)
        for index in np.argsort(-scores[image], kind="stable"):
            if scores[image][index] < min_score or not len(candidates):
                break
            overlap = box_iou(boxes[image][index], other_boxes[image][candidates])
            overlap[(other_labels[image][candidates] != labels[image][index]) | used] = -1.0
            best = int(overlap.argmax())
            if overlap[best] >= match_iou:
                used[best] = True
                matches.append((image, int(index), int(candidates[best]), float(overlap[best])))
    return matches


def match_detections(out: Sequence[np.ndarray], ref: Sequence[np.ndarray],
                     min_score: float = DETECTION_MIN_SCORE,
                     match_iou: float = DETECTION_MATCH_IOU,
                     match_fraction: float = DETECTION_MATCH_FRACTION) -> Tuple[Dict[str, float], List[Pair]]:
    """Engine vs reference detections, each (labels N x K, boxes N x K x 4 xyxy, scores N x K):
    the detection metrics and the matched pairs.

    Engines may order near-equal detections differently, so tensors are not compared
    element-wise. Recall: each confident reference detection (score >= min_score) is matched to
    an engine detection of the same class at IoU >= match_iou; precision: each confident engine
    detection to a reference one. The other side's detection may score as low as
    match_fraction * min_score: a score that crosses the threshold by a little is drift, counted
    in threshold_crossings and max_score_diff, not a lost detection."""
    (labels, boxes, scores), (ref_labels, ref_boxes, ref_scores) = out, ref
    floor = match_fraction * min_score
    found = _greedy_matches(ref_labels, ref_boxes, ref_scores, labels, boxes, scores,
                            min_score, floor, match_iou)
    confirmed = _greedy_matches(labels, boxes, scores, ref_labels, ref_boxes, ref_scores,
                                min_score, floor, match_iou)
    wanted, offered = int((ref_scores >= min_score).sum()), int((scores >= min_score).sum())
    pairs = [(image, index, match) for image, index, match, _ in found]
    score_diffs = [abs(float(scores[i][m] - ref_scores[i][r])) for i, r, m in pairs]
    crossings = (sum(scores[i][m] < min_score for i, _, m in pairs)
                 + sum(ref_scores[i][r] < min_score for i, _, r, _ in confirmed))
    metrics = {"reference_detections": wanted, "engine_detections": offered,
               # per image: an image with none is one the comparison says nothing about
               "reference_detections_per_image": [int((s >= min_score).sum()) for s in ref_scores],
               "detection_recall": len(found) / wanted if wanted else 1.0,
               "detection_precision": len(confirmed) / offered if offered else 1.0,
               "matched_box_iou": (float(np.mean([m[3] for m in found])) if found
                                   else (1.0 if not wanted else 0.0)),
               "max_score_diff": max(score_diffs, default=0.0),
               "threshold_crossings": int(crossings)}
    return metrics, pairs


def detection_mismatches(out: Sequence[np.ndarray], ref: Sequence[np.ndarray], pairs: Sequence[Pair],
                         min_score: float, limit: int = 10) -> List[Dict[str, Any]]:
    """What a failed detection check is about: each confident reference detection the engine
    did not reproduce, with the engine detection that overlaps it most (any class, any score),
    and the matched pair whose scores differ most."""
    (labels, boxes, scores), (ref_labels, ref_boxes, ref_scores) = out, ref
    matched = {(image, index) for image, index, _ in pairs}
    rows: List[Dict[str, Any]] = []
    for image, index in zip(*np.nonzero(ref_scores >= min_score)):
        if (int(image), int(index)) in matched or len(rows) == limit:
            continue
        overlap = box_iou(ref_boxes[image][index], boxes[image])
        nearest = int(overlap.argmax())
        rows.append({"kind": "lost", "sample": int(image), "reference_label": int(ref_labels[image][index]),
                     "reference_score": round(float(ref_scores[image][index]), 4),
                     "reference_box": [round(float(v), 1) for v in ref_boxes[image][index]],
                     "nearest_engine_label": int(labels[image][nearest]),
                     "nearest_engine_score": round(float(scores[image][nearest]), 4),
                     "nearest_engine_iou": round(float(overlap[nearest]), 4)})
    if pairs:
        image, index, match = max(pairs, key=lambda p: abs(float(scores[p[0]][p[2]] - ref_scores[p[0]][p[1]])))
        rows.append({"kind": "largest_score_diff", "sample": int(image),
                     "label": int(ref_labels[image][index]),
                     "reference_score": round(float(ref_scores[image][index]), 4),
                     "engine_score": round(float(scores[image][match]), 4),
                     "iou": round(float(box_iou(ref_boxes[image][index], boxes[image][match:match + 1])[0]), 4)})
    return rows


def detection_metrics(out: Sequence[np.ndarray], ref: Sequence[np.ndarray],
                      min_score: float = DETECTION_MIN_SCORE,
                      match_iou: float = DETECTION_MATCH_IOU,
                      match_fraction: float = DETECTION_MATCH_FRACTION) -> Dict[str, float]:
    return match_detections(out, ref, min_score, match_iou, match_fraction)[0]


def mask_metrics(masks: np.ndarray, ref_masks: np.ndarray, boxes: np.ndarray,
                 ref_boxes: np.ndarray, pairs: Sequence[Pair],
                 threshold: float = 0.5) -> Dict[str, float]:
    """Matched detections' masks (N x K x h x w probabilities in each detection's box, as
    Mask R-CNN's head gives them): IoU of the binary masks (probability >= threshold) where they
    lie in the image. Two matched boxes may differ (IoU 0.6 matches), so each mask is placed in
    its own box on one grid over both; comparing them box-relative would count the box's change
    as the mask's. Empty in both counts as agreement. With no matched detection there is no
    mask IoU (a perfect one would pass a mask gate for an engine that found nothing)."""
    ious = [binary_iou(*_masks_in_one_frame(masks[image, index] >= threshold, boxes[image, index],
                                            ref_masks[image, ref_index] >= threshold,
                                            ref_boxes[image, ref_index]))
            for image, ref_index, index in pairs]
    if not ious:
        return {"matched_masks": 0}
    return {"matched_masks": len(ious), "mask_iou": float(np.mean(ious)),
            "min_mask_iou": float(np.min(ious))}


def _masks_in_one_frame(mask: np.ndarray, box: np.ndarray, other: np.ndarray,
                        other_box: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Two box-relative masks sampled (nearest) on one grid over the union of their boxes, at
    twice the masks' resolution: a mask is empty outside its box."""
    frame = np.concatenate([np.minimum(box[:2], other_box[:2]), np.maximum(box[2:], other_box[2:])])
    rows, cols = 2 * mask.shape[0], 2 * mask.shape[1]
    ys = frame[1] + (np.arange(rows) + 0.5) * (frame[3] - frame[1]) / rows
    xs = frame[0] + (np.arange(cols) + 0.5) * (frame[2] - frame[0]) / cols

    def placed(m: np.ndarray, b: np.ndarray) -> np.ndarray:
        v = np.floor((ys - b[1]) / max(float(b[3] - b[1]), 1e-6) * m.shape[0]).astype(np.int64)
        u = np.floor((xs - b[0]) / max(float(b[2] - b[0]), 1e-6) * m.shape[1]).astype(np.int64)
        inside = (v >= 0) & (v < m.shape[0])
        across = (u >= 0) & (u < m.shape[1])
        out = m[np.clip(v, 0, m.shape[0] - 1)][:, np.clip(u, 0, m.shape[1] - 1)]
        return out & inside[:, None] & across[None, :]

    return placed(mask, box), placed(other, other_box)


def keypoint_metrics(keypoints: np.ndarray, ref_keypoints: np.ndarray, ref_boxes: np.ndarray,
                     pairs: Sequence[Pair]) -> Dict[str, float]:
    """Matched detections' keypoints (N x K x P x 3: x, y, visibility): the distance of each
    keypoint from the reference's, relative to the size (sqrt of the area) of the reference box,
    as COCO's keypoint similarity scales it."""
    relative, pixels = [], []
    for image, ref_index, index in pairs:
        distance = np.linalg.norm(keypoints[image, index, :, :2] - ref_keypoints[image, ref_index, :, :2],
                                  axis=-1)
        box = ref_boxes[image, ref_index]
        scale = np.sqrt(max(float((box[2] - box[0]) * (box[3] - box[1])), 1.0))
        pixels.append(distance)
        relative.append(distance / scale)
    if not pairs:  # no distance: a zero would pass a keypoint gate for an engine that found nothing
        return {"matched_keypoint_sets": 0}
    return {"matched_keypoint_sets": len(pairs),
            "keypoint_distance": float(np.mean(np.concatenate(relative))),
            "max_keypoint_distance_px": float(np.max(np.concatenate(pixels)))}


def predictions(out: np.ndarray, ref: np.ndarray, sample_names: Sequence[str],
                labels: Optional[Sequence[str]], check_expected: bool) -> List[Dict[str, Any]]:
    """Per-sample top-1 of reference and engine, with the expected class where one is known."""
    rows = []
    for name, out_row, ref_row in zip(sample_names, topk(out, 1)[:, 0], topk(ref, 1)[:, 0]):
        row: Dict[str, Any] = {"sample": name, "reference": _label(ref_row, labels),
                               "engine": _label(out_row, labels)}
        expected = EXPECTED_IMAGENET_CLASSES.get(name)
        if expected and check_expected:
            what, classes = expected
            row["expected"] = what
            row["reference_ok"] = int(ref_row) in classes
            row["engine_ok"] = int(out_row) in classes
        rows.append(row)
    return rows


def _label(index: int, labels: Optional[Sequence[str]]) -> str:
    index = int(index)
    return f"{index} {labels[index]}" if labels is not None and index < len(labels) else str(index)


def applied_gates(metrics: Mapping[str, float], tolerances: Mapping[str, float]) -> List[str]:
    """The tolerance keys that gate one of these metrics (a key for a metric this task or output
    does not have gates nothing)."""
    return [key for metric, (_, key) in GATES.items() if key in tolerances and metric in metrics]


def gate(metrics: Mapping[str, float], tolerances: Mapping[str, float], where: str) -> List[str]:
    """The failures of one output's metrics against the tolerances, as readable sentences."""
    failures = []
    if metrics.get("nonfinite", 0):
        failures.append(f"{where}: {metrics['nonfinite']} NaN/Inf values")
    for metric, (direction, key) in GATES.items():
        if key not in tolerances or metric not in metrics:
            continue
        value, bound = metrics[metric], tolerances[key]
        bad = value > bound if direction == "max" else value < bound
        if bad or not np.isfinite(value):
            relation = "above the allowed" if direction == "max" else "below the required"
            failures.append(f"{where}: {metric} = {value:.6g} is {relation} {bound:g}")
    return failures


def _result(failures: List[str], gates: Sequence[str], problems: Sequence[str],
            tolerances: Mapping[str, float], **extra: Any) -> Dict[str, Any]:
    chosen = verdict(failures, gates, problems)
    return {"verdict": chosen, "passed": chosen == "passed", "failures": failures,
            "reference_problems": list(problems), "gates": sorted(set(gates)),
            "tolerances": dict(tolerances), **extra}


def _batched(array: np.ndarray, samples: int) -> bool:
    """Whether an output has one row per sample (outputs without a batch axis do not)."""
    return array.ndim > 0 and array.shape[0] == samples


def _mean_null(ref: np.ndarray, samples: int) -> np.ndarray:
    """Every sample's output is the reference's mean over the samples (for integer outputs,
    which have no mean, the first sample's)."""
    if not _batched(ref, samples):
        return ref.copy()
    row = ref.mean(axis=0) if np.issubdtype(ref.dtype, np.floating) else ref[0]
    return np.broadcast_to(row.astype(ref.dtype), ref.shape).copy()


def _majority_class_null(ref: np.ndarray) -> np.ndarray:
    """Segmentation logits (N x classes x H x W) whose argmax is the reference's most common
    class at every pixel: the reference's mean logit per class, that class raised above the
    others."""
    classes = ref.argmax(axis=1)
    majority = int(np.bincount(classes.ravel(), minlength=ref.shape[1]).argmax())
    mean = ref.astype(np.float64).mean(axis=(0, 2, 3))
    mean[majority] = mean.max() + max(1.0, float(np.ptp(mean)))
    return np.broadcast_to(mean.astype(ref.dtype)[None, :, None, None], ref.shape).copy()


def null_predictions(reference: Mapping[str, np.ndarray], task: str,
                     samples: int) -> Dict[str, Dict[str, np.ndarray]]:
    """Outputs of engines that ignore their input (NULL_ENGINES), made from the reference: for
    detection another image's detections (rolled); for the other tasks also the mean, and for
    segmentation the majority class everywhere."""
    def each(make) -> Dict[str, np.ndarray]:
        return {name: make(np.asarray(ref)) for name, ref in reference.items()}

    rolled = each(lambda ref: np.roll(ref, 1, axis=0) if _batched(ref, samples) else ref.copy())
    if task == "detection":
        return {"rolled": rolled}
    nulls = {"mean": each(lambda ref: _mean_null(ref, samples)), "rolled": rolled}
    if task == "segmentation":
        nulls["majority_class"] = each(lambda ref: _majority_class_null(ref) if ref.ndim == 4
                                       and np.issubdtype(ref.dtype, np.floating) else
                                       _mean_null(ref, samples))
    return nulls


def _gated_values(check: Mapping[str, Any]) -> str:
    """'output 'x': metric = value, ...' of each gated metric of a null's check, for the
    vacuous message (detectors: the detection metrics)."""
    keys = set(check["gates"])

    def gated(metrics: Mapping[str, Any]) -> str:
        return ", ".join(f"{metric} = {metrics[metric]:.4g}" for metric, (_, key) in GATES.items()
                         if key in keys and metric in metrics)

    if check.get("detections"):
        return f"detections: {gated(check['detections'])}"
    return "; ".join(f"output '{where}': {gated(metrics)}"
                     for where, metrics in (check.get("outputs") or {}).items() if gated(metrics))


def null_results(reference: Mapping[str, np.ndarray], task: str, samples: int,
                 check) -> Tuple[Dict[str, Any], List[str]]:
    """Each null engine's gate check (`check(outputs)` -> failures, gates, metrics), and one
    problem per null that passes every gate: the gates cannot tell an engine from it."""
    if samples < 2:
        return {}, [f"validation has {samples} sample: an engine that ignores its input cannot "
                    "be told from one that does not; fix: set validation.num_samples to 2 or more"]
    recorded: Dict[str, Any] = {}
    passing: List[str] = []
    for name, outputs in null_predictions(reference, task, samples).items():
        failures, gates, metrics = check(outputs)
        passes = bool(gates) and not failures
        recorded[name] = {"engine": NULL_ENGINES[name], "passes_every_gate": passes,
                          "failures": failures, **metrics}
        if passes:
            passing.append(f"one that {NULL_ENGINES[name]} "
                           f"({_gated_values({'gates': gates, **metrics})})")
    if not passing:
        return recorded, []
    return recorded, ["the gates cannot tell this engine from one that ignores its input: a null "
                      f"engine passes every gate: {'; '.join(passing)}; fix: {VACUOUS_FIX}"]


def compare(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], task: str,
            tolerances: Mapping[str, float], sample_names: Sequence[str],
            labels: Optional[Sequence[str]] = None, check_expected: bool = False,
            detection_min_score: float = DETECTION_MIN_SCORE,
            detection_match_fraction: float = DETECTION_MATCH_FRACTION,
            precision: str = "fp32", with_nulls: bool = True) -> Dict[str, Any]:
    """All metrics, the verdict (VERDICTS) and (classification) per-sample predictions.

    Before the engine is judged, the same gates judge the null engines (null_predictions); a
    null that passes them all makes the cell vacuous, and their metrics are kept under `nulls`.
    with_nulls=False (debug_precision's search, which compares graphs of one cell) skips them."""
    if task == "detection":
        def check(candidate: Mapping[str, np.ndarray]):
            return _check_detections(candidate, reference, tolerances, detection_min_score,
                                     detection_match_fraction)
    else:
        def check(candidate: Mapping[str, np.ndarray]):
            return _check_tensors(candidate, reference, task, tolerances, sample_names, labels,
                                  check_expected)
    if task == "detection" and len(reference) < 3:
        return _result([f"task detection needs the outputs labels, boxes, scores first; the "
                        f"model has {list(reference)}"], [], [], tolerances, outputs={},
                       predictions=[])
    failures, gates, metrics = check(outputs)
    problems = reference_problems(reference, precision,
                                  list(reference)[1:3] if task == "detection" else None)
    if task == "detection":
        problems = [p for p in problems if "NaN/Inf" in p or "below float16" in p]
        if metrics["detections"]["reference_detections"] == 0:  # nothing compared proves nothing
            problems.append(f"the reference has no detection with score >= {detection_min_score:g}: "
                            "lower validation.detection_min_score (or the model's "
                            "detection_min_score), or use weights whose detections are confident")
    nulls: Dict[str, Any] = {}
    if with_nulls and gates and not problems:
        nulls, null_problems = null_results(reference, task, len(sample_names), check)
        problems += null_problems
    metrics.setdefault("predictions", [])
    return _result(failures, gates, problems, tolerances, nulls=nulls, **metrics)


def _check_tensors(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                   task: str, tolerances: Mapping[str, float], sample_names: Sequence[str],
                   labels: Optional[Sequence[str]], check_expected: bool
                   ) -> Tuple[List[str], List[str], Dict[str, Any]]:
    """classification, segmentation, generic: failures, applied gates and metrics per output."""
    per_output: Dict[str, Any] = {}
    failures: List[str] = []
    gates: List[str] = []
    rows: List[Dict[str, Any]] = []
    for name, ref in reference.items():
        out = outputs[name]
        if out.shape != ref.shape:
            failures.append(f"output '{name}': shape {list(out.shape)} vs reference {list(ref.shape)}")
            continue
        metrics = tensor_metrics(out, ref)
        if task == "classification" and ref.ndim >= 2:
            metrics.update(classification_metrics(out, ref, tolerances.get("rel_l2")))
            rows = predictions(out, ref, sample_names, labels, check_expected)
        elif task == "segmentation" and ref.ndim == 4:
            metrics.update(segmentation_metrics(out, ref))
        per_output[name] = metrics
        failures += gate(metrics, tolerances, f"output '{name}'")
        gates += applied_gates(metrics, tolerances)
    for row in rows:
        if "expected" in row:
            gates.append("expected_labels")
        if row.get("reference_ok") is False or row.get("engine_ok") is False:
            failures.append(f"sample '{row['sample']}' should be {row['expected']}: reference says "
                            f"{row['reference']}, engine says {row['engine']}")
    return failures, gates, {"outputs": per_output, "predictions": rows}


def _check_detections(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                      tolerances: Mapping[str, float], min_score: float, match_fraction: float
                      ) -> Tuple[List[str], List[str], Dict[str, Any]]:
    """task: detection. The first three outputs are (labels, boxes, scores) in config order; an
    output named `masks` (per-detection mask probabilities) or `keypoints` (x, y, visibility) is
    compared on the matched detections. Per-tensor metrics are reported but only the detection
    metrics (and NaNs) are gated, since a reordering of near-equal detections is not an error."""
    names = list(reference)
    per_output = {name: tensor_metrics(outputs[name], reference[name]) for name in names}
    metrics, pairs = match_detections([outputs[n] for n in names[:3]],
                                      [reference[n] for n in names[:3]], min_score,
                                      match_fraction=match_fraction)
    if "masks" in reference:
        metrics.update(mask_metrics(outputs["masks"], reference["masks"], outputs[names[1]],
                                    reference[names[1]], pairs))
    if "keypoints" in reference:
        metrics.update(keypoint_metrics(outputs["keypoints"], reference["keypoints"],
                                        reference[names[1]], pairs))
    failures = [f"output '{n}': {m['nonfinite']} NaN/Inf values" for n, m in per_output.items()
                if m["nonfinite"]]
    # gate() checks only the metrics it is given: the detection ones, not rel_l2 & co.
    failures += gate(metrics, tolerances, "detections")
    per_output[names[1]].update(metrics)  # the boxes output carries the detection metrics
    mismatches = detection_mismatches([outputs[n] for n in names[:3]],
                                      [reference[n] for n in names[:3]], pairs, min_score)
    return failures, applied_gates(metrics, tolerances), {
        "outputs": per_output, "detections": metrics, "mismatches": mismatches}
