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
# Gates of task detection, and what applies when a precision's tolerances name none of them (the
# classification defaults, rel_l2 & co., are not gated for detections: see _compare_detections).
DETECTION_GATE_KEYS = ("detection_recall_min", "detection_precision_min", "box_iou_min",
                       "score_diff_max", "mask_iou_min", "keypoint_distance_max")
DEFAULT_DETECTION_TOLERANCES = {"detection_recall_min": 0.9, "box_iou_min": 0.9}


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


def classification_metrics(out: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    top5_out, top5_ref = topk(out, 5), topk(ref, 5)
    width = top5_ref.shape[1]  # fewer than 5 classes: compare all of them
    top1 = float(np.mean(top5_out[:, 0] == top5_ref[:, 0]))
    overlap = [len(set(a) & set(b)) / width for a, b in zip(top5_out, top5_ref)]
    return {"top1_agreement": top1, "top5_agreement": float(np.mean(overlap))}


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
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


Pair = Tuple[int, int, int]  # (image, reference detection, engine detection)


def match_detections(out: Sequence[np.ndarray], ref: Sequence[np.ndarray],
                     min_score: float = DETECTION_MIN_SCORE,
                     match_iou: float = DETECTION_MATCH_IOU) -> Tuple[Dict[str, float], List[Pair]]:
    """Engine vs reference detections, each (labels N x K, boxes N x K x 4 xyxy, scores N x K):
    the detection metrics and the matched pairs.

    Engines may order near-equal detections differently, so tensors are not compared
    element-wise: each confident reference detection (score >= min_score), most confident first,
    is matched to the unmatched engine detection of the same class with the highest IoU
    (>= match_iou)."""
    (labels, boxes, scores), (ref_labels, ref_boxes, ref_scores) = out, ref
    wanted = found = 0
    pairs: List[Pair] = []
    ious: List[float] = []
    score_diffs: List[float] = [0.0]
    for image in range(ref_labels.shape[0]):
        keep = np.flatnonzero(scores[image] >= min_score)
        cand_labels, cand_boxes = labels[image][keep], boxes[image][keep]
        found += len(keep)
        used = np.zeros(len(keep), dtype=bool)
        for index in np.argsort(-ref_scores[image], kind="stable"):
            if ref_scores[image][index] < min_score:
                break
            wanted += 1
            overlap = box_iou(ref_boxes[image][index], cand_boxes) if len(keep) else np.zeros(0)
            overlap[(cand_labels != ref_labels[image][index]) | used] = -1.0
            if overlap.size and overlap.max() >= match_iou:
                best = int(overlap.argmax())
                used[best] = True
                pairs.append((image, int(index), int(keep[best])))
                ious.append(float(overlap[best]))
                score_diffs.append(abs(float(scores[image][keep[best]] - ref_scores[image][index])))
    metrics = {"reference_detections": wanted, "engine_detections": found,
               "detection_recall": len(pairs) / wanted if wanted else 1.0,
               "detection_precision": len(pairs) / found if found else 1.0,
               "matched_box_iou": float(np.mean(ious)) if ious else (1.0 if not wanted else 0.0),
               "max_score_diff": float(max(score_diffs))}
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
                      match_iou: float = DETECTION_MATCH_IOU) -> Dict[str, float]:
    return match_detections(out, ref, min_score, match_iou)[0]


def mask_metrics(masks: np.ndarray, ref_masks: np.ndarray, pairs: Sequence[Pair],
                 threshold: float = 0.5) -> Dict[str, float]:
    """Matched detections' masks (N x K x h x w probabilities in each detection's box, as
    Mask R-CNN's head gives them; matched boxes agree, so the frames do): IoU of the binary masks
    (probability >= threshold). Empty in both counts as agreement."""
    ious = [binary_iou(masks[image, index] >= threshold, ref_masks[image, ref_index] >= threshold)
            for image, ref_index, index in pairs]
    return {"matched_masks": len(ious), "mask_iou": float(np.mean(ious)) if ious else 1.0,
            "min_mask_iou": float(np.min(ious)) if ious else 1.0}


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
    if not pairs:
        return {"matched_keypoint_sets": 0, "keypoint_distance": 0.0, "max_keypoint_distance_px": 0.0}
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


def compare(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], task: str,
            tolerances: Mapping[str, float], sample_names: Sequence[str],
            labels: Optional[Sequence[str]] = None, check_expected: bool = False,
            detection_min_score: float = DETECTION_MIN_SCORE) -> Dict[str, Any]:
    """All metrics, the gate verdict and (classification) per-sample predictions."""
    per_output: Dict[str, Any] = {}
    failures: List[str] = []
    rows: List[Dict[str, Any]] = []
    if task == "detection":
        return _compare_detections(outputs, reference, tolerances, detection_min_score)
    for name, ref in reference.items():
        out = outputs[name]
        if out.shape != ref.shape:
            failures.append(f"output '{name}': shape {list(out.shape)} vs reference {list(ref.shape)}")
            continue
        metrics = tensor_metrics(out, ref)
        if task == "classification" and ref.ndim >= 2:
            metrics.update(classification_metrics(out, ref))
            rows = predictions(out, ref, sample_names, labels, check_expected)
        elif task == "segmentation" and ref.ndim == 4:
            metrics.update(segmentation_metrics(out, ref))
        per_output[name] = metrics
        failures += gate(metrics, tolerances, f"output '{name}'")
    for row in rows:
        if row.get("reference_ok") is False or row.get("engine_ok") is False:
            failures.append(f"sample '{row['sample']}' should be {row['expected']}: reference says "
                            f"{row['reference']}, engine says {row['engine']}")
    return {"passed": not failures, "failures": failures, "outputs": per_output,
            "predictions": rows, "tolerances": dict(tolerances)}


def _compare_detections(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                        tolerances: Mapping[str, float], min_score: float) -> Dict[str, Any]:
    """task: detection. The first three outputs are (labels, boxes, scores) in config order; an
    output named `masks` (per-detection mask probabilities) or `keypoints` (x, y, visibility) is
    compared on the matched detections. Per-tensor metrics are reported but only the detection
    metrics (and NaNs) are gated, since a reordering of near-equal detections is not an error."""
    names = list(reference)
    if len(names) < 3:
        return {"passed": False, "failures": [f"task detection needs the outputs labels, boxes, "
                                              f"scores first; the model has {names}"],
                "outputs": {}, "predictions": [], "tolerances": dict(tolerances)}
    per_output = {name: tensor_metrics(outputs[name], reference[name]) for name in names}
    metrics, pairs = match_detections([outputs[n] for n in names[:3]],
                                      [reference[n] for n in names[:3]], min_score)
    if "masks" in reference:
        metrics.update(mask_metrics(outputs["masks"], reference["masks"], pairs))
    if "keypoints" in reference:
        metrics.update(keypoint_metrics(outputs["keypoints"], reference["keypoints"],
                                        reference[names[1]], pairs))
    failures = [f"output '{n}': {m['nonfinite']} NaN/Inf values" for n, m in per_output.items()
                if m["nonfinite"]]
    if not any(key in tolerances for key in DETECTION_GATE_KEYS):
        tolerances = {**tolerances, **DEFAULT_DETECTION_TOLERANCES}
    if metrics["reference_detections"] == 0:  # a pass with nothing compared proves nothing
        failures.append(f"the reference has no detection with score >= {min_score:g}, so there "
                        "is nothing to validate: lower validation.detection_min_score (or the "
                        "model's detection_min_score)")
    # gate() checks only the metrics it is given: the detection ones, not rel_l2 & co.
    failures += gate(metrics, tolerances, "detections")
    per_output[names[1]].update(metrics)  # the boxes output carries the detection metrics
    mismatches = detection_mismatches([outputs[n] for n in names[:3]],
                                      [reference[n] for n in names[:3]], pairs, min_score)
    return {"passed": not failures, "failures": failures, "outputs": per_output,
            "detections": metrics, "mismatches": mismatches, "predictions": [],
            "tolerances": dict(tolerances)}
