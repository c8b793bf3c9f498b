"""Semantic segmentation through the whole workflow on ONNX Runtime: a built-in torchvision
DeepLabV3 (no download: backbone weights off), gated by pixel agreement and mIoU."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import Workflow, tiny_config

pytestmark = pytest.mark.workflow


def test_deeplabv3_segmentation_validates_per_pixel(workflow: Workflow):
    entry = {"architecture": "deeplabv3_resnet50", "task": "segmentation",
             "architecture_kwargs": {"num_classes": 21},
             "weights": {"random": True, "seed": 0},
             "inputs": [{"name": "image", "shape": [3, 64, 64], "dtype": "float32",
                         "data": "imagenet_samples"}],
             "outputs": ["out"]}
    config = tiny_config(models={"seg": entry}, precisions=["fp32", "fp16", "int8"])
    config["validation"]["on_failure"] = "record"  # int8 on random weights: record, not gate
    config["validation"]["tolerances"] = {
        "fp32": {"rel_l2": 1.0e-4, "pixel_agreement_min": 0.999, "miou_min": 0.99},
        "fp16": {"rel_l2": 1.0e-2, "pixel_agreement_min": 0.97, "miou_min": 0.9}}
    workflow.write_config(config)
    workflow.run("all")
    with open(workflow.path("results/summary.csv")) as handle:
        rows = {r["precision"]: r for r in csv.DictReader(handle)}
    for precision in ("fp32", "fp16"):
        assert rows[precision]["validation_passed"] == "True", rows[precision]
        assert float(rows[precision]["pixel_agreement"]) >= 0.97
    assert float(rows["fp32"]["miou"]) >= 0.99
    assert 0.0 <= float(rows["int8"]["pixel_agreement"]) <= 1.0  # measured and recorded
    validation = json.loads(next(workflow.path("results/validation/seg").rglob("fp32-small.json"))
                            .read_text())
    assert set(validation["outputs"]["out"]) >= {"pixel_agreement", "miou", "rel_l2"}
