"""Real Snakemake runs on bad input: one clear error naming the model and the fix, and no partial
artifact left behind."""
from __future__ import annotations

import csv

import pytest

from conftest import resnet_entry, tiny_config

pytestmark = pytest.mark.workflow


def test_missing_weights_file(workflow, tmp_path):
    missing = tmp_path / "nowhere" / "resnet18.pt"
    workflow.write_config(tiny_config(models={"net": resnet_entry({"path": str(missing)})}))
    workflow.fails("model 'net'", "weights file not found", str(missing), "fix:")
    assert workflow.files() == []


def test_weights_that_do_not_match_the_architecture(workflow, tmp_path):
    import torch
    import torchvision

    checkpoint = tmp_path / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), checkpoint)
    workflow.write_config(tiny_config(models={"net": resnet_entry({"path": str(checkpoint)})}))
    text = workflow.fails("model 'net'", "do not match architecture 'resnet18'", "missing",
                  "fix:")
    assert "Traceback" not in text.split("trtflow error")[-1][:500]
    assert workflow.files() == []
    # the failed run's summary has each cell as `error`, with the first error line
    with open(workflow.path("results/summary.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["verdict"] for r in rows] == ["error", "error"]
    assert all("weights do not match architecture 'resnet18'" in r["failures"] for r in rows), rows


def test_unknown_architecture(workflow):
    entry = resnet_entry({"random": True})
    entry["architecture"] = "resnet_18"
    workflow.write_config(tiny_config(models={"net": entry}))
    workflow.fails("model 'net'", "unknown architecture 'resnet_18'", "did you mean 'resnet18'")
    assert workflow.files() == []


def test_config_that_breaks_the_schema(workflow):
    config = tiny_config(models={"net": resnet_entry({"random": True})})
    config["batch_profiles"]["small"]["max"] = "four"
    workflow.write_config(config)
    workflow.fails("invalid config at 'batch_profiles.small.max'", "'four' is not of type 'integer'")
    assert workflow.files() == []


def test_config_with_an_unknown_key(workflow):
    config = tiny_config(models={"net": resnet_entry({"random": True})})
    config["precision"] = ["fp32"]
    workflow.write_config(config)
    workflow.fails("invalid config", "'precision' was unexpected", "allowed keys here")


def test_input_dtype_the_model_cannot_take(workflow):
    entry = resnet_entry({"random": True})
    entry["inputs"][0]["dtype"] = "int64"
    workflow.write_config(tiny_config(models={"net": entry}))
    workflow.fails("model 'net'", "cannot take its configured inputs", "input: int64",
           "fix:")
    # the weights stage succeeded and stays; the failed export leaves nothing behind
    assert not any("onnx/" in f for f in workflow.files()), workflow.files()
