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


def run_detectors(workflow: Workflow, **models) -> dict:
    """The workflow run on these detectors: summary rows by (model, precision)."""
    workflow.write_config(detector_config(**models))
    workflow.run("all")
    with open(workflow.path("results/summary.csv")) as handle:
        return {(r["model"], r["precision"]): r for r in csv.DictReader(handle)}


def test_torchvision_detectors_validate_on_every_image(workflow: Workflow) -> None:
    """FCOS (one-stage) and Faster R-CNN (two-stage) with random weights: confident detections to
    compare (initialised for validation), no download of their default ImageNet backbones, one
    image per call with outputs padded to max_detections, and no crash on an image where a
    pyramid level keeps no box (FCOS on ONNX Runtime: `Reshape ... Input shape:{0,2,2},
    requested shape:{0,-1}` before fold_known_dims)."""
    rows = run_detectors(
        workflow, fcos=detector_entry("torchvision.models.detection:fcos_resnet50_fpn"),
        frcnn=detector_entry("torchvision.models.detection:fasterrcnn_mobilenet_v3_large_fpn"))
    for model in ("fcos", "frcnn"):
        for precision in ("fp32", "fp16"):
            row = rows[(model, precision)]
            assert row["verdict"] == "passed", (model, precision, row["failures"])
            assert row["rel_l2"] == ""  # the labels tensor's metrics are not the row's
        assert float(rows[(model, "fp32")]["detection_recall"]) == 1.0
        assert float(rows[(model, "fp32")]["box_iou"]) > 0.999
        init = json.loads(workflow.path(f"results/weights/{model}.json").read_text())["detection_init"]
        assert 4 <= init["confident_per_image"] <= 30, init
        exported = json.loads(workflow.path(f"results/onnx/{model}/export.json").read_text())
        assert exported["static_batch"] == 1
        assert [o["shape"] for o in exported["outputs"]] == [[1, 100], [1, 100, 4], [1, 100]]
        validation = json.loads(next(workflow.path(f"results/validation/{model}").rglob(
            "fp32-single.json")).read_text())
        assert validation["detections"]["reference_detections"] >= 8
    fcos_init = json.loads(workflow.path("results/weights/fcos.json").read_text())["detection_init"]
    assert fcos_init["classifiers"] == ["head.classification_head.cls_logits"]
    frcnn_init = json.loads(workflow.path("results/weights/frcnn.json").read_text())["detection_init"]
    assert frcnn_init["classifiers"] == ["rpn.head.cls_logits", "roi_heads.box_predictor.cls_score"]
    patch = json.loads(next(workflow.path("results/onnx/fcos").rglob("patch.json")).read_text())
    assert next(p for p in patch["passes"] if p["pass"] == "fold_known_dims")["folded"] > 0


def test_ssdlite_and_retinanet_v2_random_weights_detect_on_every_image(workflow: Workflow) -> None:
    """Issue 22: SSDlite (its classifiers are `classification_head.module_list.N`, softmax with a
    background class) and RetinaNet v2 (a GroupNorm tower, sigmoid classifier) with random
    weights, through every stage on ONNX Runtime, with confident detections on every validation
    photo (before: SSD stopped in the weights stage, RetinaNet v2 at export)."""
    rows = run_detectors(
        workflow, ssdlite=detector_entry("torchvision.models.detection:ssdlite320_mobilenet_v3_large"),
        retinanet=detector_entry("torchvision.models.detection:retinanet_resnet50_fpn_v2"))
    for model in ("ssdlite", "retinanet"):
        for precision in ("fp32", "fp16"):
            assert rows[(model, precision)]["verdict"] == "passed", rows[(model, precision)]
        validation = json.loads(next(workflow.path(f"results/validation/{model}").rglob(
            "fp32-single.json")).read_text())
        per_image = validation["detections"]["reference_detections_per_image"]
        assert len(per_image) == 4 and min(per_image) >= 3, (model, per_image)
    init = json.loads(workflow.path("results/weights/retinanet.json").read_text())["detection_init"]
    assert 0.0 < init["calibration"] < 1.0, init  # the threshold's share, inside its range


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


def test_a_torchvision_detector_in_a_batch_profile_it_cannot_run_is_refused_at_parse(
        workflow: Workflow) -> None:
    """One image per call: a profile of batch 1 to 4 would have been exported for one batch size
    and failed later in timing (`Split size 1 exceeds the remaining size`); it is refused before
    any job runs, with the profile to add."""
    workflow.write_config(tiny_config(models={"frcnn": detector_entry(
        "torchvision.models.detection:fasterrcnn_mobilenet_v3_large_fpn")}))
    workflow.fails("models.frcnn has static_batch 1 but runs in batch profile 'small'",
                   "fix: add a profile {min: 1, opt: 1, max: 1}", args=("-n", "all"))
