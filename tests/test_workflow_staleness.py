"""Real Snakemake runs: only stale work reruns.

One scratch workflow is built once (module scope) and then edited step by step; each test looks at
what a dry run schedules after one edit, then brings the workflow back up to date.
"""
from __future__ import annotations

import shutil

import pytest

from conftest import Workflow, copy_repo, resnet_entry, tiny_config

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def built(tmp_path_factory, resnet18_checkpoint):
    directory = tmp_path_factory.mktemp("stale")
    checkpoint = directory / "ckpt_a.pt"
    shutil.copy(resnet18_checkpoint, checkpoint)
    config = tiny_config(models={
        "net_a": resnet_entry({"path": str(checkpoint)}, size=32),
        "net_b": resnet_entry({"random": True, "seed": 3}, size=32),
    })
    flow = Workflow(directory, repo=copy_repo(tmp_path_factory.mktemp("repo")))
    flow.write_config(config)
    flow.run("all")
    return flow, config, checkpoint


def _cells(jobs, key):
    return sorted({job for job in jobs if key in job})


def test_second_dry_run_schedules_nothing(built):
    flow, _, _ = built
    assert flow.scheduled() == {}


def test_adding_a_precision_schedules_only_its_jobs(built):
    flow, config, _ = built
    config["precisions"] = ["fp32", "fp16", "int8"]
    flow.write_config(config)
    jobs = flow.scheduled_jobs()
    per_cell = [j for j in jobs if j not in ("all", "summary")]
    assert per_cell, jobs
    assert all("precision=int8" in j for j in per_cell), jobs
    # int8 for both models x one profile: precision graph, engine, benchmark, validation each
    assert sorted(j.split()[0] for j in per_cell) == sorted(
        ["precision"] * 2 + ["engine"] * 2 + ["benchmark"] * 2 + ["validate"] * 2), jobs
    assert "summary" in jobs
    flow.run("all")
    assert flow.scheduled() == {}


def test_replacing_one_models_weights_reruns_only_that_model(built, resnet18_checkpoint):
    import torch
    import torchvision

    flow, _, checkpoint = built
    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoint)
    jobs = flow.scheduled_jobs()
    per_model = [j for j in jobs if j not in ("all", "summary")]
    assert per_model and all("model=net_a" in j for j in per_model), jobs
    assert {j.split()[0] for j in per_model} >= {"weights", "export", "patch", "precision",
                                                 "engine", "benchmark", "validate", "reference",
                                                 "baseline"}
    flow.run("all")
    assert flow.scheduled() == {}


def test_changing_a_patch_option_reruns_from_patch_down(built):
    flow, config, _ = built
    config["models"]["net_b"]["patch"] = {"passes": ["fold_constants", "cleanup", "toposort"]}
    flow.write_config(config)
    jobs = flow.scheduled_jobs()
    per_model = [j for j in jobs if j not in ("all", "summary")]
    assert per_model and all("model=net_b" in j for j in per_model), jobs
    rules = {j.split()[0] for j in per_model}
    assert "patch" in rules and {"precision", "engine", "benchmark", "validate"} <= rules
    assert not rules & {"weights", "export", "reference", "baseline"}, jobs
    flow.run("all")
    assert flow.scheduled() == {}


def test_unrelated_config_edit_reruns_nothing(built):
    flow, config, _ = built
    config["tensorrt"] = {"workspace_mib": 1024}  # TensorRT options do not touch an ORT run
    flow.write_config(config)
    assert flow.scheduled() == {}


def test_editing_a_stages_code_reruns_that_stage(built):
    flow, _, _ = built
    summary_code = flow.repo / "trtflow" / "summary.py"
    summary_code.write_text(summary_code.read_text() + "\n# edited\n")
    assert flow.scheduled() == {"summary": 1, "all": 1}
    patch_code = flow.repo / "workflow_scripts" / "patch.py"
    patch_code.write_text(patch_code.read_text() + "\n# edited\n")
    counts = flow.scheduled()
    assert counts["patch"] == 2 and counts["engine"] == 6, counts
    assert "weights" not in counts and "export" not in counts and "reference" not in counts
    flow.run("all")
    assert flow.scheduled() == {}
