"""trtflow.summary: the summary and latency tables from the stages' JSON files, and the plots."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from trtflow.summary import (LATENCY_COLUMNS, SUMMARY_COLUMNS, plot_accuracy_vs_speed,
                             plot_latency_vs_batch, summarize)


def point(batch: int, p50: float) -> Dict[str, Any]:
    return {"batch": batch, "iterations": 10, "latency_p50_ms": p50, "latency_p90_ms": p50 * 1.1,
            "latency_p99_ms": p50 * 1.2, "latency_mean_ms": p50 * 1.05, "latency_min_ms": p50 * 0.9,
            "throughput": batch * 1e3 / p50}


def write(path: Path, data: Any) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def make_cell(directory: Path, precision: str, p50_at_opt: float, passed: bool = True,
              failures: List[str] = ()) -> Dict[str, str]:
    """The JSON files one matrix cell leaves behind, written by hand."""
    profile = {"min": 1, "opt": 2, "max": 4}
    sidecar = {"backend": "onnxruntime", "version": "1.20.0", "device": "cpu",
               "device_name": "Test CPU", "model": "net", "precision": precision,
               "batch_profile": "small", "profile": profile, "build_seconds": 1.25,
               "layer_precisions": {"int8": 3, "fp32": 1} if precision == "int8" else None}
    benchmark = {"engine": "e", "settings": {}, "sidecar": sidecar,
                 "batches": [point(1, 1.0), point(2, p50_at_opt), point(4, 3.0)]}
    validation = {"verdict": "passed" if passed else "failed", "failures": list(failures),
                  "outputs": {"logits": {"nonfinite": 0, "max_abs": 0.0123456789,
                                         "rel_l2": 0.001, "cosine": 0.99999, "top1_agreement": 1.0,
                                         "top5_agreement": 0.9}}}
    baseline = {"model": "net", "variants": [
        {"variant": "torch-eager-fp32", "precision": "fp32", "compiled": False,
         "batches": [point(1, 2.0), point(2, 4.0), point(4, 8.0)]}]}
    weights = {"weights": "random", "seed": 0, "model": "net"}
    report = {"precision": precision}
    if precision == "int8":  # two tensors had no percentile histogram
        report["calibration"] = {"method": "percentile", "methods": "percentile+minmax",
                                 "fallback": {"method": "minmax", "count": 2,
                                              "tensors": ["/conv/Conv_output_0", "/fc/Gemm_output_0"]}}
    return {"model": "net", "precision": precision, "batch_profile": "small",
            "precision_report": write(directory / f"precision-{precision}.json", report),
            "benchmark": write(directory / f"bench-{precision}.json", benchmark),
            "validation": write(directory / f"val-{precision}.json", validation),
            "baseline": write(directory / "baseline.json", baseline),
            "weights": write(directory / "weights.json", weights)}


def read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def summarized(tmp_path: Path) -> Path:
    cells = [make_cell(tmp_path, "fp32", 2.0),
             make_cell(tmp_path, "int8", 0.5, passed=False,
                       failures=["output 'logits': rel_l2 = 0.3 is above the allowed 0.25",
                                 "sample 'coffee' should be espresso"])]
    summarize(cells, tmp_path / "summary.csv", tmp_path / "latency.csv")
    return tmp_path


def test_summary_csv_has_the_summary_columns_and_one_row_per_cell(summarized: Path) -> None:
    with open(summarized / "summary.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == SUMMARY_COLUMNS
    rows = read_csv(summarized / "summary.csv")
    assert [(r["model"], r["precision"], r["batch_profile"]) for r in rows] == [
        ("net", "fp32", "small"), ("net", "int8", "small")]


def test_the_calibration_column_names_the_tensors_that_fell_back(summarized: Path) -> None:
    fp32, int8 = read_csv(summarized / "summary.csv")
    assert fp32["calibration"] == ""
    assert int8["calibration"] == ("percentile; minmax for 2 tensors without a histogram "
                                   "(/conv/Conv_output_0, /fc/Gemm_output_0)")


def test_summary_row_values_at_the_opt_batch(summarized: Path) -> None:
    fp32, int8 = read_csv(summarized / "summary.csv")
    assert fp32["backend"] == "onnxruntime" and fp32["backend_version"] == "1.20.0"
    assert fp32["device"] == "Test CPU" and fp32["batch"] == "2"
    assert float(fp32["latency_p50_ms"]) == 2.0 and float(fp32["latency_p99_ms"]) == 2.4
    assert float(fp32["throughput"]) == 1000.0
    assert float(fp32["torch_latency_p50_ms"]) == 4.0
    assert float(fp32["speedup_vs_torch"]) == 2.0
    assert float(int8["speedup_vs_torch"]) == 8.0  # 4 ms / 0.5 ms
    # no fp16 baseline on a CPU: empty, not zero
    assert fp32["torch_fp16_latency_p50_ms"] == "" and fp32["speedup_vs_torch_fp16"] == ""
    assert fp32["validation_passed"] == "True" and int8["validation_passed"] == "False"
    assert float(fp32["max_abs"]) == 0.0123457 and float(fp32["top5_agreement"]) == 0.9
    assert fp32["failures"] == ""
    assert int8["failures"] == ("output 'logits': rel_l2 = 0.3 is above the allowed 0.25 | "
                                "sample 'coffee' should be espresso")
    assert fp32["weights"] == "random" and float(fp32["build_seconds"]) == 1.25
    assert fp32["layer_precisions"] == "" and int8["layer_precisions"] == "fp32:1 int8:3"


def test_latency_csv_has_every_batch_and_the_shared_baseline_once(summarized: Path) -> None:
    with open(summarized / "latency.csv", newline="") as handle:
        assert next(csv.reader(handle)) == LATENCY_COLUMNS
    rows = read_csv(summarized / "latency.csv")
    by_backend: Dict[str, List[Dict[str, str]]] = {}
    for row in rows:
        by_backend.setdefault(row["backend"], []).append(row)
    assert len(by_backend["onnxruntime"]) == 6  # 2 cells x 3 batches
    baseline = by_backend["torch-eager-fp32"]
    assert [r["batch"] for r in baseline] == ["1", "2", "4"]  # written by both cells, kept once
    assert {r["precision"] for r in baseline} == {"fp32"}
    assert len(rows) == 9


def test_summary_row_falls_back_to_the_last_batch_when_opt_was_not_timed(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, "fp16", 1.0)
    bench = json.loads(Path(cell["benchmark"]).read_text())
    bench["batches"] = [point(1, 1.0), point(4, 5.0)]
    Path(cell["benchmark"]).write_text(json.dumps(bench))
    (row,) = summarize([cell], tmp_path / "s.csv", tmp_path / "l.csv")
    assert row["batch"] == 4 and row["latency_p50_ms"] == 5.0
    assert row["speedup_vs_torch"] == 1.6  # 8 ms / 5 ms


def test_plots_are_written_as_png(summarized: Path) -> None:
    latency_png, accuracy_png = summarized / "latency.png", summarized / "accuracy.png"
    plot_latency_vs_batch(summarized / "latency.csv", latency_png)
    plot_accuracy_vs_speed(summarized / "summary.csv", accuracy_png)
    for png in (latency_png, accuracy_png):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not [p for p in summarized.iterdir() if p.name.startswith(".")]  # no temp files


def test_a_cell_that_did_not_finish_is_an_error_row_with_its_first_error(tmp_path: Path) -> None:
    from trtflow.summary import summarize

    done = make_cell(tmp_path, "fp32", 2.0)
    log = tmp_path / "precision.log"
    log.write_text("10:00:00 INFO precision.py: command: old run\n"
                   "10:00:01 ERROR precision.py: trtflow error: an old error, fixed since\n"
                   "10:05:00 INFO precision.py: command: this run\n"
                   "10:05:02 ERROR precision.py: trtflow error: model 'net': int8 quantisation "
                   "inserted no QuantizeLinear node\n")
    (tmp_path / "int8").mkdir()
    missing = {**make_cell(tmp_path / "int8", "int8", 1.0), "validation": str(tmp_path / "none.json"),
               "logs": [str(tmp_path / "weights.log"), str(log)]}
    rows = summarize([done, missing], tmp_path / "s.csv", tmp_path / "l.csv")
    assert [r["verdict"] for r in rows] == ["passed", "error"]
    assert rows[1]["failures"] == ("precision.log: model 'net': int8 quantisation inserted no "
                                   "QuantizeLinear node")
    written = read_csv(tmp_path / "s.csv")
    assert [r["verdict"] for r in written] == ["passed", "error"]


def test_a_stale_artifact_is_never_reported_as_current(tmp_path: Path) -> None:
    """The JSON exists, but was made from other inputs than the workflow asks for now."""
    from trtflow.summary import summarize

    cell = make_cell(tmp_path, "fp32", 2.0)
    cell["provenance"] = {"validation": "the-expected-digest"}
    rows = summarize([cell], tmp_path / "s.csv", tmp_path / "l.csv")
    assert rows[0]["verdict"] == "error" and "no log names an error" in rows[0]["failures"]


def test_a_failed_runs_summary_never_says_passed_for_a_cell_whose_job_just_failed(
        tmp_path: Path) -> None:
    """Issue 24 case 8: a cell whose precision job failed in this run kept `passed`, its
    artifacts of an earlier run being current."""
    import os
    import time

    from trtflow.summary import summarize

    cell = make_cell(tmp_path, "int8", 1.0)
    log = tmp_path / "precision.log"
    log.write_text("10:05:00 INFO precision.py: command: this run\n"
                   "10:05:02 ERROR precision.py: trtflow error: file 'patched.onnx': cannot read "
                   "this ONNX model\n")
    cell["logs"] = [str(log)]
    run_started = time.time() - 60
    rows = summarize([cell], tmp_path / "s.csv", tmp_path / "l.csv", run_started=run_started)
    assert rows[0]["verdict"] == "error" and rows[0]["validation_passed"] is False
    assert rows[0]["failures"] == "precision.log: file 'patched.onnx': cannot read this ONNX model"
    os.utime(log, (run_started - 3600, run_started - 3600))  # the error of an earlier run
    rows = summarize([cell], tmp_path / "s.csv", tmp_path / "l.csv", run_started=run_started)
    assert rows[0]["verdict"] == "passed"


def test_a_failure_row_cites_only_logs_of_this_run(tmp_path: Path) -> None:
    """Issue 24 case 9: an error row cited a stale error from an earlier, unrelated run."""
    import os
    import time

    from trtflow.summary import summarize

    cell = {**make_cell(tmp_path, "fp32", 1.0), "validation": str(tmp_path / "none.json")}
    log = tmp_path / "export.log"
    log.write_text("09:00:00 INFO export.py: command: an earlier run\n"
                   "09:00:01 ERROR export.py: trtflow error: an error fixed since\n")
    run_started = time.time()
    os.utime(log, (run_started - 3600, run_started - 3600))
    cell["logs"] = [str(log)]
    rows = summarize([cell], tmp_path / "s.csv", tmp_path / "l.csv", run_started=run_started)
    assert rows[0]["verdict"] == "error"
    assert "fixed since" not in rows[0]["failures"] and "export.log" not in rows[0]["failures"]
    assert rows[0]["failures"].startswith("not run: none of this cell's jobs ran in this run")


def test_plots_of_a_run_where_no_cell_finished(tmp_path: Path) -> None:
    from trtflow.summary import summarize

    cell = {**make_cell(tmp_path, "fp32", 2.0), "benchmark": str(tmp_path / "gone.json")}
    summarize([cell], tmp_path / "s.csv", tmp_path / "l.csv")
    plot_latency_vs_batch(tmp_path / "l.csv", tmp_path / "a.png")
    plot_accuracy_vs_speed(tmp_path / "s.csv", tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_a_detector_row_has_detection_metrics_not_the_labels_tensors(tmp_path: Path) -> None:
    """The first output of a detector is its labels: their rel. L2 looked like a failure on a
    passing cell. Its row carries recall, precision, matched box IoU and score difference."""
    cell = make_cell(tmp_path, "fp16", 2.0)
    validation = json.loads(Path(cell["validation"]).read_text())
    validation["outputs"] = {"labels": {"nonfinite": 0, "max_abs": 7.0, "rel_l2": 0.93,
                                        "cosine": 0.58}}
    validation["detections"] = {"reference_detections": 12, "engine_detections": 13,
                                "detection_recall": 1.0, "detection_precision": 0.923077,
                                "matched_box_iou": 0.9987654, "max_score_diff": 0.0123,
                                "matched_masks": 12, "mask_iou": 0.97}
    Path(cell["validation"]).write_text(json.dumps(validation))
    summarize([cell], tmp_path / "summary.csv", tmp_path / "latency.csv")
    row = read_csv(tmp_path / "summary.csv")[0]
    assert (row["detection_recall"], row["detection_precision"], row["box_iou"],
            row["score_diff"], row["mask_iou"]) == ("1.0", "0.923077", "0.998765", "0.0123", "0.97")
    assert row["rel_l2"] == row["max_abs"] == row["cosine"] == row["keypoint_distance"] == ""


def _with_profile(cell: Dict[str, str], layers: Dict[str, tuple]) -> Dict[str, str]:
    """The cell's benchmark JSON with a layer profile: name -> (type, precision, ms)."""
    from trtflow.profiling import summarize_profile

    path = Path(cell["benchmark"])
    benchmark = json.loads(path.read_text())
    benchmark["layer_profile"] = summarize_profile(
        {name: {"times_ms": [ms], "type": kind, "precision": precision}
         for name, (kind, precision, ms) in layers.items()}, batch=2, runs=1)
    path.write_text(json.dumps(benchmark))
    return cell


def test_a_lower_precision_slower_than_a_higher_one_is_flagged_with_the_profiles_why(
        tmp_path: Path) -> None:
    from trtflow.summary import speed_flag_lines

    fp16 = _with_profile(make_cell(tmp_path, "fp16", 1.0), {"conv": ("CaskConvolution", "fp16", 0.9)})
    int8 = _with_profile(make_cell(tmp_path, "int8", 1.5), {
        "conv": ("CaskConvolution", "int8", 0.6),
        "Reformatting CopyNode for Input Tensor 0 to conv": ("Reformat", "int8", 0.8)})
    rows = summarize([fp16, int8], tmp_path / "s.csv", tmp_path / "l.csv", slower_margin=0.03,
                     profile_path=tmp_path / "p.csv")
    by_precision = {row["precision"]: row for row in read_csv(tmp_path / "s.csv")}
    assert by_precision["fp16"]["speed_flags"] == ""
    assert by_precision["int8"]["speed_flags"] == "slower than fp16 (1.5 vs 1 ms, 0.67x)"
    why = by_precision["int8"]["speed_why"]
    assert "reformat/copy +0.8 ms" in why and "reformat layers 1 (0.8 ms) vs 0 (0 ms)" in why
    assert by_precision["int8"]["profile_reformat_layers"] == "1"
    (line,) = speed_flag_lines(rows)
    assert line.startswith("slower: net int8 small (onnxruntime): slower than fp16")
    profile_rows = read_csv(tmp_path / "p.csv")
    assert {(r["precision"], r["category"]) for r in profile_rows if float(r["ms"]) > 0} == {
        ("fp16", "convolution/GEMM"), ("int8", "convolution/GEMM"), ("int8", "reformat/copy")}


def test_speed_flags_keep_a_noise_margin_and_flag_an_engine_slower_than_pytorch(
        tmp_path: Path) -> None:
    fp32 = make_cell(tmp_path, "fp32", 2.0)
    fp16 = make_cell(tmp_path, "fp16", 2.04)  # 2 % slower: inside the 3 % margin
    int8 = make_cell(tmp_path, "int8", 4.4)   # PyTorch eager fp32 takes 4.0 ms at batch 2
    summarize([fp32, fp16, int8], tmp_path / "s.csv", tmp_path / "l.csv", slower_margin=0.03)
    flags = {row["precision"]: row["speed_flags"] for row in read_csv(tmp_path / "s.csv")}
    assert flags["fp32"] == "" and flags["fp16"] == ""
    assert flags["int8"] == ("slower than fp32 (4.4 vs 2 ms, 0.45x); slower than fp16 (4.4 vs "
                             "2.04 ms, 0.46x); slower than PyTorch eager fp32 (4.4 vs 4 ms)")


def test_layer_time_plot_is_written(tmp_path: Path) -> None:
    from trtflow.summary import plot_layer_profile

    cell = _with_profile(make_cell(tmp_path, "fp16", 1.0), {"conv": ("CaskConvolution", "fp16", 0.9),
                                                            "nms": ("NMS", "fp32", 0.3)})
    summarize([cell], tmp_path / "s.csv", tmp_path / "l.csv", profile_path=tmp_path / "p.csv")
    plot_layer_profile(tmp_path / "p.csv", tmp_path / "layer_time.png")
    assert (tmp_path / "layer_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.csv"
    empty.write_text("model,precision,batch_profile,backend,batch,category,ms,share,layers\n")
    plot_layer_profile(empty, tmp_path / "none.png")
    assert (tmp_path / "none.png").exists()


def latency_row(precision: str, profile: str, batch: int, p50: float,
                backend: str = "onnxruntime") -> Dict[str, str]:
    return {"model": "net", "precision": precision, "batch_profile": profile, "backend": backend,
            "batch": str(batch), "latency_p50_ms": str(p50), "latency_p99_ms": str(p50),
            "throughput": "1"}


def test_latency_plot_has_one_line_per_precision_and_profile() -> None:
    """Two profiles share batch 1: each is its own line, never the batch-1 point of one joined
    to batch 4 of the other; PyTorch's baselines, timed per profile, likewise."""
    from trtflow.summary import latency_series

    rows = [latency_row("fp32", "latency", 1, 1.0), latency_row("fp32", "latency", 4, 3.0),
            latency_row("fp32", "throughput", 1, 1.2), latency_row("fp32", "throughput", 8, 5.0),
            latency_row("int8", "latency", 1, 0.5), latency_row("int8", "latency", 4, 1.5),
            latency_row("fp32", "latency", 1, 2.0, "torch-eager-fp32"),
            latency_row("fp32", "latency", 4, 6.0, "torch-eager-fp32"),
            latency_row("fp32", "throughput", 1, 2.1, "torch-eager-fp32"),
            latency_row("fp32", "throughput", 8, 9.0, "torch-eager-fp32")]
    lines = {(s.label, s.profile): (s.batches, s.latencies) for s in latency_series(rows)["net"]}
    assert lines == {("onnxruntime fp32", "latency"): ([1, 4], [1.0, 3.0]),
                     ("onnxruntime fp32", "throughput"): ([1, 8], [1.2, 5.0]),
                     ("onnxruntime int8", "latency"): ([1, 4], [0.5, 1.5]),
                     ("torch-eager-fp32", "latency"): ([1, 4], [2.0, 6.0]),
                     ("torch-eager-fp32", "throughput"): ([1, 8], [2.1, 9.0])}
    series = latency_series(rows)["net"]
    # profiles by marker, precisions by colour
    assert len({s.marker for s in series if s.profile == "latency"}) == 1
    assert {s.marker for s in series if s.profile == "latency"} != {
        s.marker for s in series if s.profile == "throughput"}
    assert len({s.color for s in series if not s.baseline}) == 2


def summary_rows(*cells: Dict[str, str]) -> List[Dict[str, str]]:
    base = {"model": "net", "precision": "fp32", "batch_profile": "small", "verdict": "passed",
            "speedup_vs_torch": "2.0", "rel_l2": "0.001"}
    return [{**base, **cell} for cell in cells]


def test_an_exact_zero_is_marked_exact_and_profiles_get_their_own_marker() -> None:
    from trtflow.summary import accuracy_points, profile_markers

    rows = summary_rows({"rel_l2": "0.0"}, {"precision": "fp16", "rel_l2": "0.0004"},
                        {"batch_profile": "big", "rel_l2": "3.7e-07"})
    points, not_drawn = accuracy_points(rows)
    assert [(p.rel_l2, p.exact) for p in points] == [(0.0, True), (0.0004, False), (3.7e-07, False)]
    assert not_drawn == 0
    markers = profile_markers([p.profile for p in points])
    assert markers["small"] != markers["big"]


def test_a_tiny_error_is_not_rounded_to_an_exact_zero(tmp_path: Path) -> None:
    """Six significant digits: an fp32 rel. L2 of 3.7e-7 was written as 0.0 and drawn as exact."""
    cell = make_cell(tmp_path, "fp32", 2.0)
    validation = json.loads(Path(cell["validation"]).read_text())
    validation["outputs"]["logits"]["rel_l2"] = 3.66295334e-07
    Path(cell["validation"]).write_text(json.dumps(validation))
    summarize([cell], tmp_path / "s.csv", tmp_path / "l.csv")
    assert float(read_csv(tmp_path / "s.csv")[0]["rel_l2"]) == 3.66295e-07


def nan_cell(directory: Path, precision: str, verdict: str, rel_l2: float) -> Dict[str, str]:
    """A cell of a model whose outputs are NaN: validation says vacuous, its metrics are NaN."""
    (directory / precision).mkdir()
    cell = make_cell(directory / precision, precision, 1.0)
    validation = json.loads(Path(cell["validation"]).read_text())
    validation["verdict"] = verdict
    validation["reference_problems"] = ["output 'logits' is non-finite in the reference"]
    validation["outputs"]["logits"].update(rel_l2=rel_l2, max_abs=rel_l2, cosine=rel_l2)
    Path(cell["validation"]).write_text(json.dumps(validation))
    return cell


@pytest.mark.parametrize("verdicts", [
    [("fp32", "vacuous", float("nan"))],                                    # one cell, NaN
    [("fp32", "vacuous", float("nan")), ("fp16", "vacuous", float("nan"))],  # all vacuous
    [("fp32", "failed", float("inf")), ("fp16", "passed", 0.0)],            # Inf and an exact 0
    [("fp32", "passed", 0.0)],                                              # one exact cell
    [("fp32", "vacuous", float("nan")), ("fp16", "passed", 0.002)],         # a mix
], ids=["one-nan", "all-vacuous", "inf-and-zero", "one-exact", "mixed"])
def test_summary_and_plots_survive_any_mix_of_verdicts(tmp_path: Path, verdicts) -> None:
    """Issue 24, case 11: `max(nan, 1e-9)` is NaN, and an all-NaN matrix crashed the log
    scaling of the accuracy plot (`Data cannot be log-scaled`), so the verdicts never printed."""
    cells = [nan_cell(tmp_path, precision, verdict, rel_l2) for precision, verdict, rel_l2 in verdicts]
    rows = summarize(cells, tmp_path / "s.csv", tmp_path / "l.csv")
    assert [r["verdict"] for r in rows] == [v for _, v, _ in verdicts]
    plot_latency_vs_batch(tmp_path / "l.csv", tmp_path / "latency.png")
    plot_accuracy_vs_speed(tmp_path / "s.csv", tmp_path / "accuracy.png")
    for png in ("latency.png", "accuracy.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timing_columns_say_how_sure_and_an_unstable_cell_is_flagged(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, "fp32", 2.0)
    benchmark = json.loads(Path(cell["benchmark"]).read_text())
    benchmark["batches"][1].update(stable=False, spread=0.5, window_p50_ms=[2.0, 3.0, 2.0], blocks=4)
    Path(cell["benchmark"]).write_text(json.dumps(benchmark))
    baseline = json.loads(Path(cell["baseline"]).read_text())
    baseline["variants"][0]["batches"][1].update(stable=True, spread=0.02,
                                                 window_p50_ms=[4.0, 4.08, 4.0], blocks=1)
    Path(cell["baseline"]).write_text(json.dumps(baseline))
    summarize([cell], tmp_path / "s.csv", tmp_path / "l.csv", slower_margin=0.03)
    (row,) = read_csv(tmp_path / "s.csv")
    assert row["timing_stable"] == "False" and row["timing_spread"] == "0.5"
    assert row["speedup_interval"] == "1.33-2.04"  # 4.0 / 3.0 .. 4.08 / 2.0
    assert row["speedup_vs_torch"] == row["speedup_vs_torch_fp16"] == ""  # noise is no speed-up
    assert row["speed_flags"] == ("unstable timing (windows spread 50%, PyTorch's 2%; speed-up "
                                  "1.33-2.04)")
    (tmp_path / "old").mkdir()
    old = make_cell(tmp_path / "old", "fp16", 1.0)
    summarize([old], tmp_path / "s2.csv", tmp_path / "l2.csv", slower_margin=0.03)
    (row,) = read_csv(tmp_path / "s2.csv")  # measured before timings had windows
    assert row["timing_stable"] == row["speedup_interval"] == "" and row["speed_flags"] == ""


def test_a_side_by_side_speedup_replaces_the_separate_jobs_ratio(tmp_path: Path) -> None:
    """The baseline job measured PyTorch at 4 ms while a neighbour loaded the machine; timed in
    turn with the engine, PyTorch is 2.5x the engine's time: the speed-up is the pairs' median,
    its interval their range, and the cell is not called slower or faster from the stale 4 ms."""
    cell = make_cell(tmp_path, "fp32", 2.0)
    benchmark = json.loads(Path(cell["benchmark"]).read_text())
    for point in benchmark["batches"]:
        point.update(stable=True, spread=0.01, window_p50_ms=[2.0, 2.02, 2.0], blocks=1)
    opt = benchmark["sidecar"]["profile"]["opt"]
    benchmark["side_by_side"] = {"batch": opt, "pairs": 3, "speedup": 2.5, "interval": [2.4, 2.6],
                                 "stable": True, "ratios": [2.4, 2.5, 2.6]}
    Path(cell["benchmark"]).write_text(json.dumps(benchmark))
    summarize([cell], tmp_path / "s.csv", tmp_path / "l.csv", slower_margin=0.03)
    (row,) = read_csv(tmp_path / "s.csv")
    assert row["speedup_vs_torch"] == "2.5" and row["speedup_interval"] == "2.4-2.6"
    assert row["speedup_timing"] == "side by side (3 pairs)" and row["timing_stable"] == "True"
    # pairs that disagree: unstable, no speed-up, the interval kept
    benchmark["side_by_side"].update(stable=False, interval=[1.5, 2.6])
    Path(cell["benchmark"]).write_text(json.dumps(benchmark))
    summarize([cell], tmp_path / "s2.csv", tmp_path / "l2.csv", slower_margin=0.03)
    (row,) = read_csv(tmp_path / "s2.csv")
    assert row["timing_stable"] == "False" and row["speedup_vs_torch"] == ""
    assert row["speedup_interval"] == "1.5-2.6" and row["speed_flags"].startswith("unstable")
    # side by side, the engine slower than PyTorch: flagged from the pairs
    benchmark["side_by_side"].update(stable=True, speedup=0.8, interval=[0.79, 0.81])
    Path(cell["benchmark"]).write_text(json.dumps(benchmark))
    summarize([cell], tmp_path / "s3.csv", tmp_path / "l3.csv", slower_margin=0.03)
    (row,) = read_csv(tmp_path / "s3.csv")
    assert row["speed_flags"] == "slower than PyTorch eager fp32 (side by side: 0.80x)"
    # not timed side by side: the separate jobs' ratio, and why
    benchmark["side_by_side"] = {"skipped": "benchmark.side_by_side_pairs is 0"}
    Path(cell["benchmark"]).write_text(json.dumps(benchmark))
    summarize([cell], tmp_path / "s4.csv", tmp_path / "l4.csv", slower_margin=0.03)
    (row,) = read_csv(tmp_path / "s4.csv")
    assert row["speedup_timing"] == "separate jobs (benchmark.side_by_side_pairs is 0)"
    assert row["speedup_vs_torch"] == str(round(float(row["torch_latency_p50_ms"]) / 2.0, 3))


def test_an_unstable_cell_is_compared_with_no_other(tmp_path: Path) -> None:
    """An int8 cell twice as slow as fp16 is flagged only while both timings are stable; when
    fp16's windows disagree, int8 is not called slower than it (and fp16 is flagged unstable)."""
    cells = []
    for precision, ms in (("fp16", 1.0), ("int8", 2.0)):
        (tmp_path / precision).mkdir()
        cells.append(make_cell(tmp_path / precision, precision, ms))
    summarize(cells, tmp_path / "s.csv", tmp_path / "l.csv", slower_margin=0.03)
    assert "slower than fp16" in read_csv(tmp_path / "s.csv")[1]["speed_flags"]
    benchmark = json.loads(Path(cells[0]["benchmark"]).read_text())
    for point in benchmark["batches"]:
        point.update(stable=False, spread=0.4, window_p50_ms=[1.0, 1.4, 1.0], blocks=3)
    Path(cells[0]["benchmark"]).write_text(json.dumps(benchmark))
    summarize(cells, tmp_path / "s2.csv", tmp_path / "l2.csv", slower_margin=0.03)
    fp16, int8 = read_csv(tmp_path / "s2.csv")
    assert fp16["speed_flags"].startswith("unstable timing") and fp16["speedup_vs_torch"] == ""
    assert "slower than fp16" not in int8["speed_flags"]


def test_kept_for_speed_says_what_the_placement_did() -> None:
    from trtflow.summary import kept_for_speed

    rounds = [{"round": 0, "ms": 1.97}]
    skipped = {"fp16_ms": 2.5, "int8_ms": 1.97, "kept_for_speed": [], "rounds": rounds,
               "skipped": "int8 is already faster"}
    assert kept_for_speed({"speed_placement": skipped}) == (
        "0 nodes (int8 1.97 ms, already 1.27x fp16 2.5 ms: no rounds)")
    kept = {"fp16_ms": 1.86, "int8_ms": 1.5, "kept_for_speed": ["/a/Conv", "/b/MatMul"],
            "rounds": rounds + [{"round": 1, "ms": 1.5, "kept": True}]}
    assert kept_for_speed({"speed_placement": kept}) == (
        "2 nodes: /a/Conv, /b/MatMul (int8 1.97 -> 1.5 ms, fp16 1.86 ms)")
    assert kept_for_speed({}) == ""
