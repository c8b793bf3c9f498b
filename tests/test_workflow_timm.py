"""Two timm classifiers through every stage with no glue code (issue 22 item 7): the factory,
random weights made informative, and each model's own preprocessing from its pretrained config
(ViT: mean 0.5 / std 0.5, bicubic, a 0.9 crop; ResNet: ImageNet's mean/std, bicubic, 0.95)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import Workflow, tiny_config
from trtflow.random_init import what_is_needed

pytestmark = pytest.mark.workflow
SIZE = 64


def timm_entry(name: str, **kwargs) -> dict:
    """What README's timm example shows."""
    return {"architecture": "timm:create_model",
            "architecture_kwargs": {"model_name": name, "pretrained": False, **kwargs},
            "task": "classification", "weights": {"random": True, "seed": 0},
            "inputs": [{"name": "input", "shape": [3, SIZE, SIZE], "dtype": "float32",
                        "data": "imagenet_samples"}],
            "outputs": ["logits"]}


def test_timm_classifiers_run_every_stage_with_their_own_preprocessing(workflow: Workflow) -> None:
    workflow.write_config(tiny_config(
        models={"resnet": timm_entry("resnet18"),
                "vit": timm_entry("vit_tiny_patch16_224", img_size=SIZE)},
        precisions=["fp32", "fp16", "int8"], validation={"num_samples": 8, "on_failure": "record"}))
    workflow.run("all")
    with open(workflow.path("results/summary.csv")) as handle:
        rows = {(r["model"], r["precision"]): r for r in csv.DictReader(handle)}
    assert len(rows) == 6
    for model in ("resnet", "vit"):
        for precision in ("fp32", "fp16"):
            assert rows[(model, precision)]["verdict"] == "passed", rows[(model, precision)]
        assert rows[(model, "int8")]["verdict"] in ("passed", "failed")  # measured, not vacuous
        assert float(rows[(model, "int8")]["rel_l2"]) > 0
        weights = json.loads(workflow.path(f"results/weights/{model}.json").read_text())
        # informative on the calibration crops, as initialised or after rescaling
        assert what_is_needed(weights["informative_init"]["after"]) == [], weights
    inputs = {model: np.load(next(workflow.path(f"results/reference/{model}").glob("*.npz")))
              for model in ("resnet", "vit")}
    vit_input = next(v for k, v in inputs["vit"].items() if "input" in k)
    resnet_input = next(v for k, v in inputs["resnet"].items() if "input" in k)
    assert vit_input.min() >= -1.0 and vit_input.max() <= 1.0  # (x - 0.5) / 0.5
    assert resnet_input.min() < -1.5  # ImageNet's std
