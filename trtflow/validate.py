"""Validation stage: engine outputs against the PyTorch reference (numpy only).

Metrics per output: max-abs, relative L2, cosine; for classification also top-1/top-5 agreement
and, for models with real ImageNet weights, the predicted class of the sample photos whose subject
is an ImageNet class; for segmentation (N x classes x H x W logits) pixel agreement and mIoU.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .data import EXPECTED_IMAGENET_CLASSES

# metric name -> (direction, tolerance key): "max" means the metric must not exceed the tolerance
GATES = {"max_abs": ("max", "max_abs"), "rel_l2": ("max", "rel_l2"),
         "cosine": ("min", "cosine_min"), "top1_agreement": ("min", "top1_agreement_min"),
         "top5_agreement": ("min", "top5_agreement_min"),
         "pixel_agreement": ("min", "pixel_agreement_min"), "miou": ("min", "miou_min")}


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


def segmentation_metrics(out: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    """Per-pixel class (argmax over axis 1) of engine vs reference: the share of pixels that
    agree, and the mean IoU over the classes the reference predicts."""
    predicted, expected = out.argmax(axis=1), ref.argmax(axis=1)
    ious = []
    for label in np.unique(expected):
        ours, theirs = predicted == label, expected == label
        ious.append(np.count_nonzero(ours & theirs) / np.count_nonzero(ours | theirs))
    return {"pixel_agreement": float(np.mean(predicted == expected)), "miou": float(np.mean(ious))}


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
            labels: Optional[Sequence[str]] = None, check_expected: bool = False) -> Dict[str, Any]:
    """All metrics, the gate verdict and (classification) per-sample predictions."""
    per_output: Dict[str, Any] = {}
    failures: List[str] = []
    rows: List[Dict[str, Any]] = []
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
