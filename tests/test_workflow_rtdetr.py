"""RT-DETR (transformers, built from a config) through the whole workflow on ONNX Runtime, with
the deploy interface users struggle with: int32 `orig_target_sizes`, `labels/boxes/scores` out,
exported at opset 16 (no LayerNormalization op, for TensorRT 8.5), validated by detection matching."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import Workflow, tiny_config

pytest.importorskip("transformers")
pytestmark = pytest.mark.workflow


def test_rtdetr_r18_detections_validate(workflow: Workflow):
    entry = {"architecture": "rtdetr_r18", "task": "detection", "opset": 16,
             "weights": {"random": True, "seed": 0},
             "inputs": [{"name": "images", "shape": [3, 320, 320], "dtype": "float32",
                         "data": "imagenet_samples"},
                        {"name": "orig_target_sizes", "shape": [2], "dtype": "int32",
                         "range": [320, 641]}],
             "outputs": ["labels", "boxes", "scores"]}
    config = tiny_config(models={"rtdetr": entry}, precisions=["fp32", "fp16", "int8"],
                         batch_profiles={"small": {"min": 1, "opt": 2, "max": 2}})
    # random weights give scores around 0.1-0.2: the detections to reproduce are those >= 0.1
    config["validation"] = {"num_samples": 2, "on_failure": "record", "detection_min_score": 0.1,
                            "tolerances": {
                                "fp32": {"detection_recall_min": 0.7, "box_iou_min": 0.99,
                                         "score_diff_max": 1.0e-3},
                                # fp16 shifts scores by ~0.05: with random weights that reorders
                                # many near-tied detections, but the matched ones must agree
                                "fp16": {"detection_recall_min": 0.4, "box_iou_min": 0.95}}}
    workflow.write_config(config)
    workflow.run("all")
    with open(workflow.path("results/summary.csv")) as handle:
        rows = {r["precision"]: r for r in csv.DictReader(handle)}
    assert rows["fp32"]["validation_passed"] == "True", rows["fp32"]["failures"]
    assert rows["fp16"]["validation_passed"] == "True", rows["fp16"]["failures"]
    # a detector's row: detection metrics, not the labels tensor's rel. L2
    assert float(rows["fp32"]["detection_recall"]) >= 0.7 and float(rows["fp32"]["box_iou"]) > 0.99
    assert rows["fp32"]["rel_l2"] == "" and rows["fp32"]["cosine"] == ""
    exported = json.loads(workflow.path("results/onnx/rtdetr/export.json").read_text())
    assert exported["opset"] == 16
    assert [i["dtype"] for i in exported["inputs"]] == ["float32", "int32"]
    ops = json.loads(next(workflow.path("results/onnx/rtdetr").rglob("fp32.json")).read_text())["op_types"]
    assert "LayerNormalization" not in ops and ops.get("GridSample", 0) > 0
    validation = json.loads(next(workflow.path("results/validation/rtdetr").rglob("fp32-small.json"))
                            .read_text())
    detections = validation["detections"]
    assert detections["reference_detections"] > 0 and detections["matched_box_iou"] > 0.99
    int8 = json.loads(next(workflow.path("results/validation/rtdetr").rglob("int8-small.json"))
                      .read_text())
    assert 0.0 <= int8["detections"]["detection_recall"] <= 1.0  # measured and recorded
