"""Verdicts users can trust, run for real: built-in gates with a user config that names none, a
reference that proves nothing (`vacuous`), a profile larger than the validation set, and a matrix
with failing and erroring cells that still gets its summary and report, then a next run that
picks up where the failed one left."""
from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from conftest import Workflow, tiny_config, token_entry

pytestmark = pytest.mark.workflow
TINY_VIT = {"image_size": 32, "patch_size": 16, "num_layers": 1, "num_heads": 2, "hidden_dim": 8,
            "mlp_dim": 16, "num_classes": 10}


def image_entry(architecture: str, weights: dict, size: int, **extra) -> dict:
    entry = {"architecture": architecture, "task": "classification", "weights": weights,
             "inputs": [{"name": "image", "shape": [3, size, size], "dtype": "float32"}],
             "outputs": ["logits"]}
    entry.update(extra)
    return entry


def only(model: str, *precisions: str) -> list:
    return [{"model": model, "precision": p} for p in ("fp32", "fp16", "int8") if p not in precisions]


@pytest.fixture(scope="module")
def verdict_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("verdicts")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    zero_head = directory / "vit_zero_head.pt"  # torchvision's ViT starts its head at zero
    torch.save(torchvision.models.VisionTransformer(**TINY_VIT).state_dict(), zero_head)
    vit = "torchvision.models:VisionTransformer"
    cnn = "user_models.verdict_models:scaled_cnn"
    models = {
        # a user config with no tolerances at all: the built-in gates apply
        "tokens": token_entry({"random": True, "seed": 1}),
        "vit_zero_head": image_entry(vit, {"path": str(zero_head)}, 32, architecture_kwargs=TINY_VIT),
        "vit_random": image_entry(vit, {"random": True}, 32, architecture_kwargs=TINY_VIT),
        "tiny_logits": image_entry(cnn, {"random": True}, 16),
        "big_batch": image_entry(cnn, {"random": True}, 16, architecture_kwargs={"scale": 1.0},
                                 batch_profiles=["b16"]),
        "no_int8": image_entry("user_models.verdict_models:elementwise", {"random": True}, 16),
        "strict": image_entry(cnn, {"random": True}, 16, architecture_kwargs={"scale": 1.0},
                              tolerances={"fp16": {"rel_l2": 1.0e-9}}),
    }
    for name, entry in models.items():
        entry.setdefault("batch_profiles", ["small"])
    config = tiny_config(
        models=models, precisions=["fp32", "fp16", "int8"],
        batch_profiles={"small": {"min": 1, "opt": 2, "max": 4}, "b16": {"min": 16, "opt": 16, "max": 16}},
        exclude=(only("tokens", "fp32") + only("vit_zero_head", "fp32") + only("vit_random", "fp32")
                 + only("tiny_logits", "fp32", "fp16") + only("big_batch", "fp32")
                 + only("no_int8", "fp32", "int8") + only("strict", "fp16")),
        validation={"num_samples": 8})
    config["report"] = {"html": True}
    flow = Workflow(directory)
    flow.write_config(config)
    done = flow.run("all", check=False)
    return flow, config, done


def rows(flow: Workflow):
    with open(flow.path("results/summary.csv")) as handle:
        return {(r["model"], r["precision"]): r for r in csv.DictReader(handle)}


def validation(flow: Workflow, model: str, precision: str, profile: str = "small") -> dict:
    return json.loads(next(flow.path(f"results/validation/{model}").rglob(
        f"{precision}-{profile}.json")).read_text())


def test_the_run_fails_but_summary_and_report_cover_every_cell(verdict_run):
    flow, _, done = verdict_run
    assert done.returncode != 0
    table = rows(flow)
    assert {k: r["verdict"] for k, r in table.items()} == {
        ("tokens", "fp32"): "passed", ("vit_zero_head", "fp32"): "vacuous",
        ("vit_random", "fp32"): "passed", ("tiny_logits", "fp32"): "passed",
        ("tiny_logits", "fp16"): "vacuous", ("big_batch", "fp32"): "passed",
        ("no_int8", "fp32"): "passed", ("no_int8", "int8"): "error", ("strict", "fp16"): "failed"}
    assert "int8 quantisation inserted no QuantizeLinear node" in table[("no_int8", "int8")]["failures"]
    assert table[("strict", "fp16")]["validation_passed"] == "False"
    assert all(re.fullmatch(r"[0-9a-f]{16}", r["provenance"]) for k, r in table.items()
               if r["verdict"] != "error")
    html = flow.path("results/report.html").read_text(errors="replace")
    assert "summary.csv" in html
    for plot in ("latency_vs_batch.png", "accuracy_vs_speed.png"):
        assert flow.path(f"results/plots/{plot}").read_bytes()[:4] == b"\x89PNG"
    # the run ends with the table of the partial summary, which the landing page says it is
    output = done.stdout + done.stderr
    table = output[output.rindex("trtflow verdicts ("):]
    assert "9 cells: 5 passed, 1 failed, 2 vacuous, 1 error" in table, table
    assert re.search(r"\nno_int8 +int8 +small +error +\S", table), table
    assert "A job failed" in flow.path("results/index.html").read_text()


def test_gates_apply_without_any_tolerance_in_the_config(verdict_run):
    flow, config, _ = verdict_run
    assert "tolerances" not in config["validation"] and "tolerances" not in config["models"]["tokens"]
    result = validation(flow, "tokens", "fp32")
    assert result["verdict"] == "passed"
    assert {"rel_l2", "cosine_min", "top1_agreement_min"} <= set(result["gates"])


def test_zero_and_tiny_references_are_vacuous_and_say_why(verdict_run):
    flow, _, _ = verdict_run
    zero = validation(flow, "vit_zero_head", "fp32")
    (problem,) = zero["reference_problems"]  # all zero: the null that returns the mean passes
    assert problem.startswith("the gates cannot tell this engine from one that ignores its input")
    assert zero["nulls"]["mean"]["passes_every_gate"] and zero["nulls"]["mean"]["outputs"]["logits"]["rel_l2"] == 0
    tiny = validation(flow, "tiny_logits", "fp16")
    assert "below float16's smallest normal number" in tiny["reference_problems"][0]
    # the same zero-head architecture with `random: true` is re-initialised and really tested
    assert validation(flow, "vit_random", "fp32")["verdict"] == "passed"
    weights = json.loads(flow.path("results/weights/vit_random.json").read_text())
    assert weights["reinitialised_zero_layers"] == ["heads.head"]


def test_a_profile_larger_than_the_validation_set_validates(verdict_run):
    flow, _, _ = verdict_run
    result = validation(flow, "big_batch", "fp32", "b16")
    assert result["verdict"] == "passed"
    assert result["outputs"]["logits"]["rel_l2"] < 1e-5


def test_each_stage_ran_only_code_its_digest_covers(verdict_run):
    """The code digest is each script's import closure: what the stages really imported (their
    logs' `code:` lines) is inside it, so no edit of code a stage runs can go unnoticed."""
    from conftest import REPO
    from trtflow.provenance import import_closure

    flow, _, _ = verdict_run
    seen = 0
    for log in flow.path("results/logs").rglob("*.log"):
        for line in log.read_text().splitlines():
            match = re.search(r" INFO (\w+)\.py: code: (.*)$", line)
            if match:
                script = REPO / "workflow_scripts" / f"{match.group(1)}.py"
                closure = {str(p.relative_to(REPO)) for p in import_closure(script, [REPO], ["trtflow"])}
                # (the user's factory module, under tests/ here, has its own digest: model_code)
                ran = {f for f in match.group(2).split() if not f.startswith("tests/")}
                assert ran <= closure, (log, ran - closure)
                seen += 1
    assert seen > 20


def test_the_next_run_sets_the_partial_summary_aside_and_redoes_it(verdict_run):
    flow, config, _ = verdict_run
    assert flow.path("results/.partial-summary.json").exists()
    scheduled = flow.scheduled()
    assert scheduled.get("summary") == 1 and scheduled.get("precision") == 1, scheduled
    # a dry run changes nothing on disk (issue 24): the summary is set aside by the real run
    assert not flow.path("results/last-failed-run/summary.csv").exists()
    assert flow.path("results/.partial-summary.json").exists()
    config["exclude"].append({"model": "no_int8", "precision": "int8"})
    config["validation"]["on_failure"] = "record"
    flow.write_config(config)
    flow.run("all")
    assert flow.path("results/last-failed-run/summary.csv").exists()
    table = rows(flow)
    assert len(table) == 8 and "error" not in {r["verdict"] for r in table.values()}
    assert json.loads(flow.path("results/verdicts.json").read_text())["verdicts"] == {
        "passed": 5, "vacuous": 2, "failed": 1}
    assert not flow.path("results/.partial-summary.json").exists()
    assert flow.scheduled() == {}


def test_a_config_override_of_one_validation_key_keeps_the_tolerances(workflow: Workflow):
    """`--config validation="{on_failure: record}"`: Snakemake merges it into the file's block,
    so the file's tolerances and the built-in ones stay."""
    config = tiny_config(models={"tokens": token_entry({"random": True})}, precisions=["fp16"],
                         validation={"tolerances": {"fp16": {"cosine_min": 0.98}}})
    workflow.write_config(config)
    done = workflow.run("-n", "-p", "all", "--config", "validation={on_failure: record}")
    text = done.stdout + done.stderr
    tolerances = json.loads(re.search(r"--tolerances '([^']*)'", text).group(1))
    assert tolerances == {"rel_l2": 0.01, "cosine_min": 0.98, "top1_agreement_min": 1.0}
    assert "--on-failure record" in text
