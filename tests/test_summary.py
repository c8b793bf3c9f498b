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
    assert float(fp32["max_abs"]) == 0.012346 and float(fp32["top5_agreement"]) == 0.9
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
