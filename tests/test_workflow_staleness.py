"""Real Snakemake runs: only stale work reruns.

One scratch workflow is built once (module scope) and then edited step by step; each test looks at
what a dry run schedules after one edit, then brings the workflow back up to date.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, Workflow, copy_repo, resnet_entry, tiny_config, token_entry

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def built(tmp_path_factory, resnet18_checkpoint):
    directory = tmp_path_factory.mktemp("stale")
    checkpoint = directory / "ckpt_a.pt"
    shutil.copy(resnet18_checkpoint, checkpoint)
    # photos, not noise: on 32x32 uniform noise a torchvision-initialised resnet18 gives nearly
    # one output for every sample (mean-null rel_l2 0.19 under int8's 0.25: vacuous)
    photos = [{"name": "input", "shape": [3, 32, 32], "dtype": "float32", "data": "imagenet_samples"}]
    config = tiny_config(models={
        "net_a": resnet_entry({"path": str(checkpoint)}, size=32, inputs=photos),
        "net_b": resnet_entry({"random": True, "seed": 3}, size=32, inputs=photos),
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
    per_cell = [j for j in jobs if j not in ("all", "summary", "verdicts")]
    assert per_cell, jobs
    assert all("precision=int8" in j for j in per_cell), jobs
    # int8 for both models x one profile: precision graph, engine, benchmark, validation each
    assert sorted(j.split()[0] for j in per_cell) == sorted(
        ["precision"] * 2 + ["engine"] * 2 + ["benchmark"] * 2 + ["validate"] * 2), jobs
    assert "summary" in jobs and "verdicts" in jobs
    flow.run("all")
    assert flow.scheduled() == {}


def test_replacing_one_models_weights_reruns_only_that_model(built, resnet18_checkpoint):
    import torch
    import torchvision

    flow, _, checkpoint = built
    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoint)
    jobs = flow.scheduled_jobs()
    per_model = [j for j in jobs if j not in ("all", "summary", "verdicts")]
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
    per_model = [j for j in jobs if j not in ("all", "summary", "verdicts")]
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
    assert flow.scheduled() == {"summary": 1, "verdicts": 1, "all": 1}
    patch_code = flow.repo / "workflow_scripts" / "patch.py"
    patch_code.write_text(patch_code.read_text() + "\n# edited\n")
    counts = flow.scheduled()
    assert counts["patch"] == 2 and counts["engine"] == 6, counts
    assert "weights" not in counts and "export" not in counts and "reference" not in counts
    flow.run("all")
    assert flow.scheduled() == {}


def _kill_when_running(process: subprocess.Popen, directory, script: str, timeout: float = 300) -> bool:
    """SIGKILL the first `script` job of the workflow in `directory`, as the OOM killer would."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        for job in psutil.process_iter(["cmdline", "cwd"]):
            try:
                cmdline = " ".join(job.info["cmdline"] or [])
                if script in cmdline and job.info["cwd"] == str(directory) and "python" in cmdline:
                    job.send_signal(signal.SIGKILL)
                    return True
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.1)
    return False


def test_a_failed_export_after_an_opset_change_still_rebuilds_downstream(built):
    """Change the opset, the export job dies (SIGKILL): its output is gone, and the next run must
    rebuild the export and everything made from the old opset, not say 'Nothing to be done'."""
    flow, config, _ = built
    config["export"] = {"opset": 16}
    flow.write_config(config)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(flow.repo / "Snakefile"),
               "--directory", str(flow.directory), "--configfile", str(flow.config_path),
               "--cores", "1", "all"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = _kill_when_running(process, flow.directory, "workflow_scripts/export.py")
    assert process.wait(timeout=600) != 0 and killed
    # keep-going: the other model's chain may have finished; the killed one's export is gone
    lost = [m for m in ("net_a", "net_b") if not flow.path(f"results/onnx/{m}/exported.onnx").exists()]
    assert len(lost) == 1, lost
    jobs = [j for j in flow.scheduled_jobs() if j not in ("all", "summary", "verdicts")]
    rules = {j.split()[0] for j in jobs if f"model={lost[0]}" in j}
    assert rules >= {"export", "patch", "precision", "engine", "benchmark", "validate"}, jobs
    assert not rules & {"weights", "reference", "baseline"}, jobs
    flow.run("all")
    for model in ("net_a", "net_b"):
        report = json.loads(flow.path(f"results/onnx/{model}/export.json").read_text())
        assert report["opset"] == 16, report
    assert flow.scheduled() == {}


def test_editing_a_user_factory_module_reruns_its_chain(tmp_path, monkeypatch):
    """architecture: my_module:build is the user's code: editing it reruns that model's chain."""
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = (REPO / "tests" / "user_models" / "token_classifier.py").read_text()
    (package / "tokens.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    flow = Workflow(tmp_path / "flow")
    flow.directory.mkdir()
    entry = token_entry({"random": True}, architecture="userpkg.tokens:build")
    flow.write_config(tiny_config(models={"tokens": entry,
                                          "other": resnet_entry({"random": True}, size=32)},
                                  precisions=["fp32"]))
    flow.run("all")
    assert flow.scheduled() == {}
    (package / "tokens.py").write_text(source.replace("hidden.mean(dim=1)", "hidden.amax(dim=1)"))
    jobs = [j for j in flow.scheduled_jobs() if j not in ("all", "summary", "verdicts")]
    assert jobs and all("model=tokens" in j for j in jobs), jobs
    assert {j.split()[0] for j in jobs} >= {"weights", "export", "reference", "baseline",
                                            "engine", "validate"}


def test_a_tensorrt_plan_is_the_same_each_time_and_int8_engines_follow_their_fp16_engine(tmp_path):
    """The int8 engine's latency-aware placement reads the fp16 engine (an unpack() input
    function): its provenance must come from that function's paths, not from the function's
    repr (a memory address, new in every process: every engine was rebuilt on every run)."""
    flow = Workflow(tmp_path)
    target = {"tensorrt": "8.6.0", "compute_capability": "9.0"}

    def engine_provenance(**tensorrt) -> dict:
        flow.write_config(tiny_config(backend="tensorrt", tensorrt={"target": target, **tensorrt},
                                      precisions=["fp16", "int8"],
                                      models={"net": resnet_entry({"random": True, "seed": 0})}))
        text = flow.run("-n", "-p", "all").stdout
        jobs = re.findall(r"engine\.py .*?--precision (\w+) .*?--provenance (\w+)", text)
        return dict(jobs)

    first, again = engine_provenance(), engine_provenance()
    assert set(first) == {"fp16", "int8"} and first == again
    other_fp16 = engine_provenance(workspace_mib=2048)  # both engines' settings change
    assert other_fp16["int8"] != first["int8"]
    no_speed = engine_provenance(int8_speed={"rounds": 0})  # int8 alone: fp16 stays
    assert no_speed["fp16"] == first["fp16"] and no_speed["int8"] != first["int8"]
