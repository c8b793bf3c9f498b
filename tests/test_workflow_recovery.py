"""Issue 24 cases 7-9, run for real: a corrupt artifact found by a run is removed with everything
made from it and the next run remakes all of it (a dry run changes nothing on disk); a failed
run's summary never says `passed` for a cell whose chain failed, and leaves no verdicts of an
earlier run beside it."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, Tuple

import pytest

from conftest import Workflow, tiny_config, token_entry

pytestmark = pytest.mark.workflow


def _snapshot(root: Path) -> Dict[str, Tuple[int, int]]:
    """Every file under results/ with its size and mtime (a dry run must change none)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and "/logs/" not in str(p)}


def _verdicts(flow: Workflow) -> Dict[str, str]:
    with open(flow.path("results/summary.csv")) as handle:
        return {f"{r['model']} {r['precision']}": r["verdict"] for r in csv.DictReader(handle)}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated, and newer than what was made from it


@pytest.fixture
def done_run(workflow: Workflow) -> Workflow:
    workflow.write_config(tiny_config(models={"tok": token_entry({"random": True})},
                                      precisions=["fp32", "int8"]))
    workflow.run("all")
    assert set(_verdicts(workflow).values()) == {"passed"}
    return workflow


def test_a_corrupt_intermediate_and_all_made_from_it_are_made_again_in_one_run(done_run):
    """Case 7: run B deleted a truncated exported.onnx, then ran only summary/verdicts/all,
    leaving exported.onnx, patched.onnx and patch.json missing; a dry run deleted files."""
    flow = done_run
    exported = flow.path("results/onnx/tok/exported.onnx")
    _truncate(exported)
    flow.fails("file 'results/onnx/tok/exported.onnx': cannot read this ONNX model, made by the "
               "workflow's 'export' stage")
    assert Path(str(exported) + ".corrupt").exists()
    before = _snapshot(flow.path("results"))
    planned = flow.scheduled()
    assert _snapshot(flow.path("results")) == before  # the dry run changed nothing
    assert {"export", "patch", "precision", "engine", "validate", "benchmark", "summary",
            "verdicts"} <= set(planned), planned
    done = flow.run("all")
    assert "deleted results/onnx/tok/exported.onnx, found corrupt" in done.stdout + done.stderr
    for relative in ("onnx/tok/exported.onnx", "onnx/tok/onnxruntime/patched.onnx",
                     "onnx/tok/onnxruntime/patch.json", "onnx/tok/export.json"):
        assert flow.path(f"results/{relative}").is_file(), relative
    import onnx

    onnx.checker.check_model(onnx.load(str(exported)))
    assert not list(flow.path("results").rglob("*.corrupt"))
    assert flow.scheduled() == {}
    assert set(_verdicts(flow).values()) == {"passed"}
    assert json.loads(flow.path("results/verdicts.json").read_text())["verdicts"] == {"passed": 2}


def test_a_failed_runs_summary_says_error_for_the_cells_whose_jobs_failed(done_run):
    """Case 8: a failed precision job (its input corrupt, its old graphs current) left the cells
    `passed` in the partial summary, and the previous run's verdicts.json in place."""
    flow = done_run
    _truncate(flow.path("results/onnx/tok/onnxruntime/patched.onnx"))
    flow.fails("cannot read this ONNX model, made by the workflow's 'patch' stage")
    verdicts = _verdicts(flow)
    assert verdicts == {"tok fp32": "error", "tok int8": "error"}, verdicts
    with open(flow.path("results/summary.csv")) as handle:
        assert all("patched.onnx" in r["failures"] for r in csv.DictReader(handle))
    assert not flow.path("results/verdicts.json").exists()
    flow.run("all")  # and the next run recovers
    assert set(_verdicts(flow).values()) == {"passed"} and flow.scheduled() == {}


def test_a_truncated_benchmark_json_is_recovered_by_the_next_run(done_run):
    """Case 9: a truncated benchmark JSON took three runs, citing deleted files or stale errors."""
    flow = done_run
    benchmark = next(flow.path("results/benchmark/tok").rglob("fp32-small.json"))
    _truncate(benchmark)
    flow.fails()
    with open(flow.path("results/summary.csv")) as handle:
        rows = {r["precision"]: r for r in csv.DictReader(handle)}
    assert rows["fp32"]["verdict"] == "error" and "cannot read this JSON file" in rows["fp32"]["failures"]
    assert rows["int8"]["verdict"] == "passed"
    flow.run("all")
    assert benchmark.is_file() and json.loads(benchmark.read_text())["batches"]
    assert set(_verdicts(flow).values()) == {"passed"} and flow.scheduled() == {}
