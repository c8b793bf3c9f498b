"""trtflow.debug: layer comparison and fallback search on a small real model with one layer that
reduced precision breaks (tests/user_models/precision_models.py: a depthwise conv whose large
kernels cancel), through the workflow's own export, patch and precision stages; then
`snakemake debug_precision` for real, and the cell passing once its fallback file is applied."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import onnx
import pytest
import yaml

from conftest import Workflow, tiny_config
from trtflow import debug
from trtflow.config import validate_config
from trtflow.cpu import instruction_set, int8_form
from trtflow.data import input_set
from trtflow.patch import patch_onnx
from trtflow.precision import INT8_OPS, make_precision
from unit_helpers import (calibration_options, exported, reference_module, torch_outputs,
                          validated_spec)

EDGE = "/inner/edge/Conv"  # the layer int8 and fp16 cannot run (its kernels cancel)
BACKENDS = ("tensorrt", "onnxruntime")
PATCH_OPTIONS = {"passes": ["fold_constants", "cleanup", "toposort", "infer_shapes"],
                 "int64_inputs_to_int32": "auto"}
# gates the cells fail (int8 rel. L2 ~0.22, fp16 ~0.012) and pass with the edge conv kept
GATES = {"int8": {"rel_l2": 0.1, "cosine_min": 0.99}, "fp16": {"rel_l2": 5e-3}}
# the int8 form the workflow picks on this CPU: U8S8 saturates without VNNI (trtflow.cpu), and the
# edge conv kept in float then still misses the gate on AVX2 (rel. L2 > 0.08)
ORT_INT8_FORM = int8_form(instruction_set())


def edge_entry() -> Dict[str, Any]:
    return {"architecture": "user_models.precision_models:edge_cnn", "task": "generic",
            "weights": {"random": True},
            # photos, not noise: the global pooling averages noise inputs into one output for
            # every sample, which the null engines reproduce (the cell would be vacuous)
            "inputs": [{"name": "image", "shape": [3, 16, 16], "dtype": "float32",
                        "data": "imagenet_samples"}],
            "outputs": ["logits"]}


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> Dict[str, Any]:
    """The edge model through weights, export and patch (per backend), its int8 and fp16 graphs,
    8 validation samples and PyTorch's outputs for them."""
    directory = tmp_path_factory.mktemp("debug")
    spec = validated_spec("edge", edge_entry())
    weights, source = exported(directory, "edge", spec)
    inputs, names = input_set("edge", spec["inputs"], 8, "validation")
    reference = dict(zip(spec["outputs"], torch_outputs(reference_module("edge", spec, weights),
                                                        inputs)))
    calibration, _ = input_set("edge", spec["inputs"], 8, "calibration")
    options = calibration_options(directory / "ranges")
    graphs: Dict[Tuple[str, str], Path] = {}
    for backend in BACKENDS:
        patched = directory / f"patched-{backend}.onnx"
        patch_onnx("edge", source, patched, directory / f"patch-{backend}.json", backend,
                   PATCH_OPTIONS)
        graphs[(backend, "fp32")] = patched
        for precision in ("int8", "fp16"):
            graphs[(backend, precision)] = directory / f"{backend}-{precision}.onnx"
            int8 = precision == "int8"
            make_precision("edge", precision, patched, graphs[(backend, precision)],
                           directory / f"{backend}-{precision}.json", backend,
                           calibration=calibration if int8 else None,
                           calibration_options=options if int8 else None,
                           int8_form=ORT_INT8_FORM)
    return {"graphs": graphs, "inputs": inputs, "names": names, "reference": reference,
            "calibration": calibration, "options": options}


def cell(edge: Dict[str, Any], backend: str, precision: str,
         tolerances: Dict[str, float]) -> debug.CellDebug:
    check = debug.CellCheck("generic", tolerances, precision, edge["reference"], edge["names"])
    runtime = debug.Runtime(backend, {"graph_optimization_level": "all"}, 1)
    return debug.CellDebug("edge", precision, backend, check, runtime, {},
                           debug.default_settings(), INT8_OPS[backend])


def stage_build(edge: Dict[str, Any], backend: str, precision: str):
    """The graph with nodes kept, as the precision stage makes it."""
    def build(nodes, workdir):
        keep = debug.applied_keep_precision({}, precision, nodes)
        int8 = precision == "int8"
        return debug.precision_stage_graph(
            "edge", precision, backend, edge["graphs"][(backend, "fp32")], keep, workdir,
            edge["calibration"] if int8 else None, edge["options"] if int8 else None,
            int8_form=ORT_INT8_FORM)
    return build


def output_before_its_pair(model) -> str:
    """The name of the float tensor a Q/DQ pair on the graph's output rounds (or the output)."""
    output = model.graph.output[0].name
    views = {view: tensor for tensor, view in debug.dequantized_views(model).items()}
    made_by = {o: n for n in model.graph.node for o in n.output}
    if output in made_by and made_by[output].op_type == "DequantizeLinear":
        return made_by[made_by[output].input[0]].input[0]
    return views.get(output, output)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_with_every_quantised_node_reading_floats_computes_the_fp32_graph(edge, backend):
    """The variant's rewiring is exact: float sources of Q/DQ pairs (ONNX Runtime's folded Relu
    applied again, shuffles repeated), the fp32 weights by name. Only the graph output's own pair
    is left, so the tensor it rounds is compared."""
    fp32 = onnx.load(str(edge["graphs"][(backend, "fp32")]))
    int8 = onnx.load(str(edge["graphs"][(backend, "int8")]))
    variants = debug.Int8Variants(int8, fp32)
    nodes = variants.quantised_nodes(INT8_OPS[backend])
    assert EDGE in nodes and len(nodes) >= 4, nodes
    built = variants.build(nodes)
    made_by = {o: n.op_type for n in built.graph.node for o in n.output}
    for node in (n for n in built.graph.node if n.name in nodes):
        assert all(made_by.get(i) != "DequantizeLinear" for i in node.input), node
    tensor = output_before_its_pair(built)
    marked = debug.with_outputs(built, [tensor])
    runtime = debug.Runtime(backend, {"graph_optimization_level": "all"}, 1)
    got = debug.run_graph(runtime.session(marked), marked, edge["inputs"])[tensor]
    want = debug.run_graph(runtime.session(fp32, exact=True), fp32, edge["inputs"])["logits"]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
    # the int8 graph itself is far from it: the comparison above can fail
    rounded = debug.run_graph(runtime.session(int8), int8, edge["inputs"])["logits"]
    assert np.linalg.norm(rounded - want) / np.linalg.norm(want) > 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_layer_table_names_the_edge_conv_as_the_first_layer_that_diverges(edge, backend):
    fp32 = onnx.load(str(edge["graphs"][(backend, "fp32")]))
    int8 = onnx.load(str(edge["graphs"][(backend, "int8")]))
    runtime = debug.Runtime(backend, {"graph_optimization_level": "all"}, 1)
    layers = debug.compare_layers(fp32, int8, edge["inputs"], runtime)
    assert [layer.index for layer in layers] == sorted(layer.index for layer in layers)
    first = debug.first_divergent(layers, 0.1, 3)
    assert first[0].node == EDGE and first[0].op_type == "Conv", first
    before = [layer for layer in layers if layer.index < first[0].index]
    assert before and all(layer.rel_l2 < 0.01 for layer in before), before
    # the edge conv itself loses the accuracy; later layers carry it on
    assert first[0].increase == max(layer.increase for layer in layers)


def test_a_layer_of_numerically_zero_values_is_not_divergent() -> None:
    """Relative error means nothing on values of 1e-13 (RT-DETR's padded attention slices had
    rel. L2 1.0 at max-abs 3e-13 and crowded the real layers out of the report)."""
    noise = debug.LayerError(0, "slice", "Slice", "t0", 1.0, 3e-13, 1.0)
    real = debug.LayerError(1, "conv", "Conv", "t1", 0.4, 0.2, 0.3)
    unreadable = debug.LayerError(2, "nan", "Conv", "t2", float("inf"), float("inf"), float("inf"))
    reshaped = debug.LayerError(3, "shape", "Conv", "t3", float("inf"), 0.0, float("inf"))
    assert debug.first_divergent([noise, real, unreadable, reshaped], 0.1, 5) == [
        real, unreadable, reshaped]


@pytest.mark.parametrize("backend,precision", [("tensorrt", "int8"), ("onnxruntime", "int8"),
                                               ("tensorrt", "fp16"), ("onnxruntime", "fp16")])
def test_the_search_keeps_the_edge_conv_and_the_stage_graph_passes(edge, backend, precision):
    report = debug.debug_cell(cell(edge, backend, precision, GATES[precision]),
                              edge["graphs"][(backend, "fp32")],
                              edge["graphs"][(backend, precision)], edge["inputs"],
                              stage_build=stage_build(edge, backend, precision))
    assert report["baseline"]["verdict"] == "failed"
    assert report["first_divergent"][0]["node"] == EDGE
    assert report["candidates"][0]["node"] == EDGE
    assert report["status"] == "fallback_found" and report["chosen"] == [EDGE]
    assert report["final"]["verdict"] == "passed"
    assert max(report["final"]["gate_errors"].values()) <= debug.default_settings()["margin"]
    json.dumps(report)  # the report is written as JSON


def test_a_cell_that_passes_with_margin_gets_no_fallback(edge):
    report = debug.debug_cell(cell(edge, "onnxruntime", "int8", {"rel_l2": 1.0}),
                              edge["graphs"][("onnxruntime", "fp32")],
                              edge["graphs"][("onnxruntime", "int8")], edge["inputs"])
    assert report["status"] == "passes_already"
    assert report["chosen"] == [] and report["candidates"] == []


def test_an_engine_worse_than_the_simulation_raises_the_bar(edge):
    """Gates the simulated cell passes with margin, but the cell's engine measured 3x the
    simulated error: the search then holds the simulation to a third of the margin."""
    import dataclasses

    int8 = onnx.load(str(edge["graphs"][("onnxruntime", "int8")]))
    measure = cell(edge, "onnxruntime", "int8", {"rel_l2": 1.0})
    error = debug.evaluate(int8, [], measure.check, measure.runtime, edge["inputs"]).errors
    # a gate twice the simulated error (U8S8 and U8U8 give different errors): half of what it allows
    loose = cell(edge, "onnxruntime", "int8", {"rel_l2": 2 * error["logits:rel_l2"]})
    simulated = debug.evaluate(int8, [], loose.check, loose.runtime, edge["inputs"])
    assert max(simulated.errors.values()) == pytest.approx(0.5)
    assert max(simulated.errors.values()) < debug.default_settings()["margin"]
    worse = dataclasses.replace(loose, engine_errors={k: 3 * v for k, v in simulated.errors.items()})
    report = debug.debug_cell(worse, edge["graphs"][("onnxruntime", "fp32")],
                              edge["graphs"][("onnxruntime", "int8")], edge["inputs"])
    assert report["engine_gap"]["logits:rel_l2"] == pytest.approx(3.0)
    assert report["status"] == "fallback_found" and report["chosen"] == [EDGE]


def test_gate_errors_measure_each_gate_against_what_it_allows():
    result = {"outputs": {"logits": {"rel_l2": 0.05, "cosine": 0.995, "top1_agreement": 0.875}},
              "predictions": []}
    errors = debug.gate_errors(result, {"rel_l2": 0.1, "cosine_min": 0.99,
                                        "top1_agreement_min": 1.0})
    assert errors["logits:rel_l2"] == pytest.approx(0.5)
    assert errors["logits:cosine"] == pytest.approx(0.5)
    assert errors["logits:top1_agreement"] == pytest.approx(0.125 / debug.TINY_ALLOWANCE)
    assert debug.engine_gap({"logits:rel_l2": 1.5}, {"logits:rel_l2": 0.5}) == {"logits:rel_l2": 3.0}
    assert debug.engine_gap({"logits:rel_l2": 0.2}, {"logits:rel_l2": 0.5}) == {"logits:rel_l2": 1.0}


def test_the_overlay_keeps_the_models_lists_and_layers_over_a_config(tmp_path):
    from snakemake.utils import update_config

    from trtflow.config import backend_keep_precision

    current = {"fp16": {"nodes": ["/a/Conv"], "op_types": ["Gemm"]},
               "fp32": {"nodes": ["/b/Conv"], "op_types": []}}
    overlay = debug.fallback_overlay("edge", "int8", current, ["/c/Conv", "/a/Conv"], "tensorrt")
    assert overlay == {"models": {"edge": {"keep_precision": {"tensorrt": {"fp16": {
        "nodes": ["/a/Conv", "/c/Conv"], "op_types": ["Gemm"]}}}}}}
    path = tmp_path / "int8.fallback.yaml"
    debug.write_overlay(path, overlay, ["how to apply it", "  snakemake all --configfile a b"])
    text = path.read_text()
    assert text.startswith("# how to apply it\n#   snakemake all --configfile a b\n")
    config = tiny_config(models={"edge": {**edge_entry(), "keep_precision": current}})
    update_config(config, yaml.safe_load(text))  # as Snakemake layers --configfile files
    kept = validate_config(config)["models"]["edge"]["keep_precision"]
    # the backend the search ran on gets the node; the other backend keeps the common lists
    assert backend_keep_precision(kept, "tensorrt") == {
        "fp16": {"nodes": ["/a/Conv", "/c/Conv"], "op_types": ["Gemm"]},
        "fp32": {"nodes": ["/b/Conv"], "op_types": []}}
    assert backend_keep_precision(kept, "onnxruntime", ["fp16"]) == {
        "fp16": {"nodes": ["/a/Conv"], "op_types": ["Gemm"]}}
    assert list(debug.fallback_overlay("edge", "fp16", {}, ["/c/Conv"], "onnxruntime")["models"][
        "edge"]["keep_precision"]["onnxruntime"]) == ["fp32"]


def printed_commands(text: str) -> list:
    """The `snakemake ...` commands a run's output prints between backticks, in order."""
    return [part for part in text.split("`")[1::2] if part.startswith("snakemake ")]


def run_as_printed(command: str, directory: Path):
    """A printed command, word for word, in the folder the user runs the workflow from: a
    checkout of the workflow (its files linked) that is also the run's working directory."""
    import os
    import shlex
    import subprocess
    import sys

    from conftest import REPO

    for entry in ("Snakefile", "rules", "workflow_scripts", "trtflow", "config", "profiles",
                  "envs", "report"):
        if not (directory / entry).exists():
            (directory / entry).symlink_to(REPO / entry)
    words = shlex.split(command)
    assert words[0] == "snakemake"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "snakemake", *words[1:]], cwd=directory,
                          capture_output=True, text=True, timeout=1500, env=env)


@pytest.mark.workflow
def test_debug_precision_names_the_layer_and_its_fallback_makes_the_cell_pass(workflow: Workflow):
    """The run's hint prints the commands that debug the cell and apply the fallback; each runs
    as printed (issue 22: the hint named the file without the run's config, which fails with
    MissingRuleException for any config but the default, and without --cores)."""
    config = tiny_config(models={"edge": {**edge_entry(), "tolerances": {"int8": GATES["int8"]}}},
                         precisions=["int8"], validation={"num_samples": 8},
                         calibration={"num_samples": 8})
    workflow.write_config(config)
    # the int8 cell fails, and the run's last message says what to do
    failed = workflow.fails("failed: edge int8", "snakemake debug_precision")
    assert not workflow.path("results/debug").exists()  # `all` does not debug
    debug_cell, debug_all, apply = printed_commands(failed)[-3:]
    hint_file = debug_cell.split()[1]
    assert hint_file.endswith("int8.fallback.yaml"), hint_file
    assert f"--configfile {workflow.config_path}" in debug_cell and "--cores all" in debug_cell
    assert debug_all.startswith("snakemake debug_precision ")

    done = run_as_printed(debug_cell, workflow.directory)
    assert done.returncode == 0, done.stderr[-4000:]
    fallback = workflow.path(hint_file)
    report = json.loads(fallback.with_name("int8.json").read_text())
    assert report["first_divergent"][0]["node"] == EDGE
    assert report["candidates"][0]["node"] == EDGE and report["chosen"] == [EDGE]
    assert report["status"] == "fallback_found" and report["final"]["verdict"] == "passed"
    log = next(workflow.path("results/logs/debug_precision").glob("edge-*-int8.log")).read_text()
    assert f"layer diverges: {EDGE}" in log and f"most sensitive #1: {EDGE}" in log
    assert "debug_precision_cell" in done.stdout + done.stderr

    text = fallback.read_text()
    assert f"  {apply}\n" in text  # the file's own header prints the same command
    overlay = yaml.safe_load(text)
    assert overlay["models"]["edge"]["keep_precision"]["onnxruntime"]["fp16"]["nodes"] == [EDGE]
    assert apply.endswith(f"--configfile {workflow.config_path} {hint_file}"), apply
    applied = run_as_printed(apply, workflow.directory)
    assert applied.returncode == 0, applied.stderr[-4000:]
    with open(workflow.path("results/summary.csv")) as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["verdict"] == "passed", row
    precision_report = next(workflow.path("results/onnx/edge").rglob("int8.json"))
    assert json.loads(precision_report.read_text())["kept_float"]["fp16"] == [EDGE]


def test_the_verdicts_hint_names_the_debug_files_of_failed_int8_and_fp16_cells():
    from trtflow.summary import precision_debug_hint

    files = {"edge int8": "results/debug/edge/onnxruntime/u8s8/int8.fallback.yaml",
             "edge fp16": "results/debug/edge/onnxruntime/u8s8/fp16.fallback.yaml"}
    rows = [{"model": "edge", "precision": "int8", "verdict": "failed"},
            {"model": "edge", "precision": "fp16", "verdict": "passed"},
            {"model": "edge", "precision": "fp32", "verdict": "failed"}]
    default = {"configfiles": [], "default_config": ["config/config.yaml"], "config": []}
    hint = precision_debug_hint(rows, files, default)  # a run of the default config
    assert f"`snakemake {files['edge int8']} --cores all`" in hint and files["edge fp16"] not in hint
    assert (f"`snakemake all --cores all --configfile config/config.yaml {files['edge int8']}`"
            in hint)
    rerun = {"configfiles": ["/work/my config.yaml"], "default_config": ["/work/my config.yaml"],
             "config": ["validation={on_failure: record}"]}
    mine = precision_debug_hint(rows, files, {**rerun, "default_config": []})
    assert (f"`snakemake {files['edge int8']} --cores all --configfile '/work/my config.yaml' "
            "--config 'validation={on_failure: record}'`") in mine
    assert (f"`snakemake all --cores all --configfile '/work/my config.yaml' {files['edge int8']} "
            "--config 'validation={on_failure: record}'`") in mine
    assert precision_debug_hint(rows[1:], files, default) is None  # fp32 has no fallback list
    assert precision_debug_hint([{**rows[0], "verdict": "vacuous"}], files) is None


def test_ranking_reports_its_progress_and_orders_by_gain(caplog) -> None:
    """Hundreds of candidates (a transformer) take minutes: the ranking says how far it is."""
    nodes = [f"n{i}" for i in range(60)]
    distance = {node: 1.0 - (0.5 if node == "n41" else 0.01) for node in nodes}

    def evaluation(kept, value):
        return debug.Evaluation(list(kept), "failed", [], {}, {}, value)

    baseline = evaluation([], 1.0)
    with caplog.at_level("INFO", logger="trtflow.debug"):
        ranked = debug.rank(nodes, {}, lambda kept: kept,
                            lambda graph, kept: evaluation(kept, distance[kept[0]]), baseline)
    assert ranked[0].node == "n41" and ranked[1].node == "n0"  # ties keep graph order
    progress = [r.getMessage() for r in caplog.records if "nodes tried" in r.getMessage()]
    assert [m.split(" of ")[0].split()[-1] for m in progress] == ["25", "50"], progress
    assert all("of 60 nodes tried" in m and "left" in m for m in progress)
