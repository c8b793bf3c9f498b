"""A model from the user's own module (`package.module:factory`) with its own checkpoint goes
through every stage, here with an int64 token input."""
from __future__ import annotations

import csv

import pytest
import torch

from conftest import Workflow, tiny_config, token_entry

pytestmark = pytest.mark.workflow


def test_user_model_with_checkpoint_runs_end_to_end(workflow: Workflow, tmp_path):
    from user_models.token_classifier import build

    torch.manual_seed(5)
    checkpoint = tmp_path / "tokens.pt"
    torch.save({"state_dict": build().state_dict(), "epoch": 3}, checkpoint)
    workflow.write_config(tiny_config(
        precisions=["fp32", "fp16", "int8"],
        models={"tokens": token_entry({"path": str(checkpoint)})}))
    workflow.run("all")
    with open(workflow.path("results/summary.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["precision"] for r in rows] == ["fp32", "fp16", "int8"]
    assert all(r["validation_passed"] == "True" for r in rows), rows
    assert {r["weights"] for r in rows} == {"checkpoint"}
    assert float(rows[0]["rel_l2"]) < 1e-5
