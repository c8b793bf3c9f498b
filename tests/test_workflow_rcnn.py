"""Mask R-CNN and Keypoint R-CNN (torchvision's R50-FPN) through the whole workflow on ONNX
Runtime: static batch 1, fixed input size, the detector surgery passes, and validation of
detections (class + IoU), masks (IoU) and keypoints (distance)."""
from __future__ import annotations

import csv
import json

from conftest import Workflow, tiny_config

import pytest

pytestmark = pytest.mark.workflow
SIZE = 320  # a multiple of 32 (the FPN's coarsest stride); 1344 in config/hard_models.yaml
# detections per image: the mask and keypoint heads run once per detection (the keypoint head's
# eight 512-channel convolutions made a random keypoint R-CNN take 11 s an image at 100 on a
# 2-CPU AMD EPYC); 20 holds the ~12 confident ones a random detector is calibrated to
MAX_DETECTIONS = 20


def rcnn_entry(architecture: str, outputs, **extra) -> dict:
    entry = {"architecture": architecture, "task": "detection", "batch_profiles": ["single"],
             "weights": {"random": True, "seed": 0},
             "inputs": [{"name": "images", "shape": [3, SIZE, SIZE], "dtype": "float32",
                         "data": "photos"}],
             "outputs": outputs, "max_detections": MAX_DETECTIONS}
    entry.update(extra)
    return entry


def test_mask_and_keypoint_rcnn_validate(workflow: Workflow):
    models = {
        # fp32: the built-in detection gates, plus the masks' and keypoints'. fp16: a random
        # ResNet-50 R-CNN's region classes change with the small proposal shifts fp16 makes (a
        # region of class 69 at 0.59 comes out as class 11), and its random mask head's masks
        # are noise that a shifted box does not reproduce; trained weights do neither
        # (benchmarks/gpu/hard_models_shapes.yaml holds trained ones to the full fp16 gates)
        # TensorRT's RoI pooling on ONNX Runtime: each MultiScaleRoIAlign as one GridSample over
        # the FPN levels (pyramid_roialign), checked against PyTorch by the same gates
        "mask": rcnn_entry("maskrcnn_r50_fpn", ["labels", "boxes", "scores", "masks"], tolerances={
            "fp32": {"mask_iou_min": 0.98}, "fp16": {"detection_recall_min": 0.5, "box_iou_min": 0.7}},
            patch={"pyramid_roialign": "always"}),
        "keypoint": rcnn_entry("keypointrcnn_r50_fpn",
                               ["labels", "boxes", "scores", "keypoints", "keypoints_scores"],
                               tolerances={"fp32": {"keypoint_distance_max": 0.01},
                                           "fp16": {"detection_recall_min": 0.5, "box_iou_min": 0.7}}),
    }
    config = tiny_config(models=models, precisions=["fp32", "fp16", "int8"],
                         batch_profiles={"single": {"min": 1, "opt": 1, "max": 1}},
                         exclude=[{"model": "keypoint", "precision": "int8"}])
    config["validation"] = {"num_samples": 3, "on_failure": "record"}
    # no layer-profile pass: a random keypoint R-CNN takes 11 s an inference on a 2-CPU AMD EPYC,
    # and 10 profiled runs per cell were 4 of the test's 20 minutes (tests/test_profiling.py
    # covers the profile)
    config["benchmark"] = {**config["benchmark"], "profile_runs": 0}
    workflow.write_config(config)
    workflow.run("all")
    with open(workflow.path("results/summary.csv")) as handle:
        rows = {(r["model"], r["precision"]): r for r in csv.DictReader(handle)}
    for cell in [("mask", "fp32"), ("mask", "fp16"), ("keypoint", "fp32"), ("keypoint", "fp16")]:
        assert rows[cell]["validation_passed"] == "True", (cell, rows[cell]["failures"])
    assert ("mask", "int8") in rows  # measured and recorded, pass or not

    exported = json.loads(workflow.path("results/onnx/mask/export.json").read_text())
    assert exported["static_batch"] == 1 and exported["inputs"][0]["shape"] == [1, 3, SIZE, SIZE]
    assert exported["outputs"][3]["shape"] == [1, MAX_DETECTIONS, 28, 28]  # padded: static shapes
    patch = json.loads(workflow.path("results/onnx/mask/onnxruntime/patch.json").read_text())
    guards = next(p for p in patch["passes"] if p["pass"] == "inline_empty_guards")
    assert len(guards["inlined"]) == 2  # the two NMS guards (RPN and box head)
    pyramid = next(p for p in patch["passes"] if p["pass"] == "pyramid_roialign")
    # the box and mask heads' poolings, 4 levels each, from one image of the levels
    assert [r["levels"] for r in pyramid["rewritten"]] == [4, 4] and pyramid["atlases"] == 1
    gridsample = next(p for p in patch["passes"] if p["pass"] == "roialign_to_gridsample")
    assert gridsample["skipped"].startswith("policy 'auto'")  # ONNX Runtime: none left anyway

    mask = json.loads(next(workflow.path("results/validation/mask").rglob("fp32-single.json")).read_text())
    assert mask["detections"]["reference_detections"] > 10
    assert mask["detections"]["matched_masks"] == mask["detections"]["reference_detections"]
    keypoint = json.loads(next(workflow.path("results/validation/keypoint").rglob("fp32-single.json"))
                          .read_text())
    assert keypoint["detections"]["matched_keypoint_sets"] > 0
    assert keypoint["detections"]["keypoint_distance"] < 1e-3
    keypoint16 = json.loads(next(workflow.path("results/validation/keypoint").rglob("fp16-single.json"))
                            .read_text())
    assert keypoint16["detections"]["keypoint_distance"] >= 0.0  # measured and recorded
