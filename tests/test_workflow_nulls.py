"""Null engines, run for real (issue 22): a cell whose gates an engine that ignores its input
would pass is `vacuous`, in every precision, with the nulls' metrics in its validation JSON; an
informative model of the same shape still passes."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import Workflow, tiny_config

pytestmark = pytest.mark.workflow
MODELS = "user_models.verdict_models"


def image_model(factory: str, task: str, output: str, **kwargs) -> dict:
    return {"architecture": f"{MODELS}:{factory}", "task": task, "architecture_kwargs": kwargs,
            "weights": {"random": True, "seed": 0},
            "inputs": [{"name": "image", "shape": [3, 16, 16], "dtype": "float32"}],
            "outputs": [output]}


# int8 verdicts must not depend on the CPU: this CPU's int8 form, and AVX2's (U8U8) by override
@pytest.fixture(scope="module", params=["auto", "avx2"])
def null_run(tmp_path_factory, request):
    flow = Workflow(tmp_path_factory.mktemp(f"nulls-{request.param}"))
    config = tiny_config(
        models={"near_constant": image_model("near_constant", "classification", "logits"),
                "informative": image_model("near_constant", "classification", "logits", spread=1.0,
                                           offset=0.0),
                "one_class": image_model("one_class_segmenter", "segmentation", "out")},
        precisions=["fp32", "fp16", "int8"], exclude=[{"model": "one_class", "precision": "fp16"}],
        validation={"num_samples": 8, "on_failure": "record"}, onnxruntime={"isa": request.param})
    flow.write_config(config)
    flow.run("all")
    with open(flow.path("results/summary.csv")) as handle:
        rows = {(r["model"], r["precision"]): r for r in csv.DictReader(handle)}
    return flow, rows


def validation(flow: Workflow, model: str, precision: str) -> dict:
    return json.loads(next(flow.path(f"results/validation/{model}").rglob(
        f"{precision}-small.json")).read_text())


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_a_near_constant_classifier_is_vacuous_in_every_precision(null_run, precision):
    flow, rows = null_run
    row = rows[("near_constant", precision)]
    assert row["verdict"] == "vacuous", row
    assert "the gates cannot tell this engine from one that ignores its input" in row["failures"]
    result = validation(flow, "near_constant", precision)
    assert result["nulls"]["mean"]["passes_every_gate"]
    assert result["nulls"]["mean"]["outputs"]["logits"]["rel_l2"] < 1e-4
    assert "fix: use trained weights" in result["reference_problems"][0]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_the_same_network_with_informative_outputs_passes(null_run, precision):
    flow, rows = null_run
    assert rows[("informative", precision)]["verdict"] == "passed", rows[("informative", precision)]
    nulls = validation(flow, "informative", precision)["nulls"]
    assert set(nulls) == {"mean", "rolled"} and not any(n["passes_every_gate"] for n in nulls.values())


def test_a_one_class_segmenter_is_vacuous_where_only_class_gates_apply(null_run):
    """int8's segmentation gates are pixel agreement and mIoU only: the null that predicts the
    one class everywhere scores 1.0 on both. In fp32, rel_l2 (1e-4) on the logits still tells
    an engine from every null, so that cell is tested."""
    flow, rows = null_run
    assert rows[("one_class", "int8")]["verdict"] == "vacuous", rows[("one_class", "int8")]
    majority = validation(flow, "one_class", "int8")["nulls"]["majority_class"]
    assert majority["passes_every_gate"]
    assert majority["outputs"]["out"]["pixel_agreement"] == 1.0 and majority["outputs"]["out"]["miou"] == 1.0
    fp32 = validation(flow, "one_class", "fp32")
    assert fp32["verdict"] == "passed", fp32["reference_problems"] + fp32["failures"]
    assert any("rel_l2" in f for f in fp32["nulls"]["majority_class"]["failures"])
