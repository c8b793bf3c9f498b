"""A user's torchvision detector through every stage with no glue code: the factory, random
weights, `task: detection` and its inputs and outputs (trtflow/detection.py adapts it)."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import Workflow, tiny_config

pytestmark = pytest.mark.workflow

SIZE = 320


def detector_entry(architecture: str, **extra) -> dict:
    """What README's "Your own model" shows for a detector: five lines, no wrapper module."""
    entry = {"architecture": architecture, "task": "detection", "weights": {"random": True},
             "inputs": [{"name": "images", "shape": [3, SIZE, SIZE], "dtype": "float32",
                         "data": "photos"}],
             "outputs": ["labels", "boxes", "scores"]}
    entry.update(extra)
    return entry


def detector_config(**models) -> dict:
    return tiny_config(models=models, batch_profiles={"single": {"min": 1, "opt": 1, "max": 1}})


def test_a_one_stage_torchvision_detector_validates_on_every_image(workflow: Workflow) -> None:
    """FCOS with random weights: confident detections to compare (initialised for validation),
    no download of its default ImageNet backbone, one image per call with outputs padded to
    max_detections, and no crash on an image where a pyramid level keeps no box (ONNX Runtime's
    `Reshape ... Input shape:{0,2,2}, requested shape:{0,-1}` before fold_known_dims)."""
    workflow.write_config(detector_config(
        fcos=detector_entry("torchvision.models.detection:fcos_resnet50_fpn")))
    workflow.run("all")
    with open(workflow.path("results/summary.csv")) as handle:
        rows = {r["precision"]: r for r in csv.DictReader(handle)}
    for precision in ("fp32", "fp16"):
        assert rows[precision]["verdict"] == "passed", rows[precision]["failures"]
        assert rows[precision]["rel_l2"] == ""  # the labels tensor's metrics are not the row's
    assert float(rows["fp32"]["detection_recall"]) == 1.0
    assert float(rows["fp32"]["box_iou"]) > 0.999
    weights = json.loads(workflow.path("results/weights/fcos.json").read_text())
    init = weights["detection_init"]
    assert init["classifiers"] == ["head.classification_head.cls_logits"]
    assert 4 <= init["confident_per_image"] <= 30
    exported = json.loads(workflow.path("results/onnx/fcos/export.json").read_text())
    assert exported["static_batch"] == 1
    assert [o["shape"] for o in exported["outputs"]] == [[1, 100], [1, 100, 4], [1, 100]]
    validation = json.loads(next(workflow.path("results/validation/fcos").rglob("fp32-single.json"))
                            .read_text())
    assert validation["detections"]["reference_detections"] >= 8
    patch = json.loads(next(workflow.path("results/onnx/fcos").rglob("patch.json")).read_text())
    assert next(p for p in patch["passes"] if p["pass"] == "fold_known_dims")["folded"] > 0


def test_a_detector_config_that_cannot_work_says_why(workflow: Workflow) -> None:
    """Outputs the detector does not return, and a detector that finds nothing on the image it is
    traced with (the graph would keep only the no-detection path): one message each."""
    workflow.write_config(detector_config(fcos=detector_entry(
        "torchvision.models.detection:fcos_resnet50_fpn", outputs=["boxes", "scores"])))
    workflow.fails("model 'fcos': outputs ['boxes', 'scores']: this torchvision detector returns "
                   "['labels', 'boxes', 'scores']", "fix: set models.fcos.outputs")
    workflow.write_config(detector_config(fcos=detector_entry(
        "torchvision.models.detection:fcos_resnet50_fpn",
        architecture_kwargs={"score_thresh": 0.99})))
    workflow.fails("model 'fcos': the detector finds nothing on the sample image it is traced "
                   "with", "lower the detector's score threshold")
