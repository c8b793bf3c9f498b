"""Summary stage: one table row per model x precision x batch profile x backend, and the plots."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import TrtflowError
from .io import atomic_path, read_json
from .provenance import digest
from .validate import FAILING_VERDICTS

SUMMARY_COLUMNS = [
    "model", "precision", "batch_profile", "verdict", "backend", "backend_version", "device",
    "batch", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms",
    "throughput", "torch_latency_p50_ms", "speedup_vs_torch", "torch_fp16_latency_p50_ms",
    "speedup_vs_torch_fp16", "validation_passed", "max_abs", "rel_l2", "cosine",
    "top1_agreement", "top5_agreement", "pixel_agreement", "miou", "detection_recall",
    "detection_precision", "box_iou", "score_diff", "mask_iou", "keypoint_distance", "failures",
    "weights", "calibration",
    "build_seconds", "layer_precisions", "provenance",
]
# the per-cell artifacts a summary row is made of (paths and expected provenance in each cell)
CELL_ARTIFACTS = ("benchmark", "validation", "baseline", "weights", "precision_report")
LATENCY_COLUMNS = ["model", "precision", "batch_profile", "backend", "batch", "latency_p50_ms",
                   "latency_p99_ms", "throughput"]


def _at_batch(batches: Sequence[Mapping[str, Any]], batch: int) -> Optional[Mapping[str, Any]]:
    return next((b for b in batches if int(b["batch"]) == int(batch)), None)


def _baseline(baseline: Mapping[str, Any], variant: str, batch: int) -> Optional[float]:
    for entry in baseline["variants"]:
        if entry["variant"] == variant:
            point = _at_batch(entry["batches"], batch)
            return float(point["latency_p50_ms"]) if point else None
    return None


# the accuracy columns of a cell's task: tensor metrics of its first output, or, for detectors,
# the detection metrics (their first output is the labels tensor, whose rel. L2 means nothing)
TENSOR_COLUMNS = {name: name for name in ("max_abs", "rel_l2", "cosine", "top1_agreement",
                                          "top5_agreement", "pixel_agreement", "miou")}
DETECTION_COLUMNS = {"detection_recall": "detection_recall",
                     "detection_precision": "detection_precision", "box_iou": "matched_box_iou",
                     "score_diff": "max_score_diff", "mask_iou": "mask_iou",
                     "keypoint_distance": "keypoint_distance"}


def accuracy_columns(validation: Mapping[str, Any]) -> Dict[str, Any]:
    if "detections" in validation:
        metrics, columns = validation["detections"], DETECTION_COLUMNS
    else:
        metrics = next(iter((validation.get("outputs") or {}).values()), {})
        columns = TENSOR_COLUMNS
    return {column: _round(metrics.get(key)) for column, key in columns.items()}


def calibration_column(precision_report: Mapping[str, Any]) -> str:
    """An int8 cell's calibration: the method, and the tensors that fell back to min/max."""
    calibration = precision_report.get("calibration")
    if not calibration:
        return ""
    fallback = calibration.get("fallback")
    if not fallback:
        return calibration["method"]
    names = fallback["tensors"]
    return (f"{calibration['method']}; {fallback['method']} for {fallback['count']} tensors "
            f"without a histogram ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")


def summary_row(cell: Mapping[str, str], benchmark: Mapping[str, Any],
                validation: Mapping[str, Any], baseline: Mapping[str, Any],
                weights: Mapping[str, Any],
                precision_report: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    sidecar = benchmark["sidecar"]
    opt = int(sidecar["profile"]["opt"])
    point = _at_batch(benchmark["batches"], opt) or benchmark["batches"][-1]
    torch32 = _baseline(baseline, "torch-eager-fp32", point["batch"])
    torch16 = _baseline(baseline, "torch-eager-fp16", point["batch"])
    p50 = float(point["latency_p50_ms"])
    return {
        "model": cell["model"], "precision": cell["precision"],
        "batch_profile": cell["batch_profile"], "backend": sidecar["backend"],
        "backend_version": sidecar["version"], "device": sidecar.get("device_name", ""),
        "batch": point["batch"], "latency_p50_ms": round(p50, 4),
        "latency_p90_ms": round(point["latency_p90_ms"], 4),
        "latency_p99_ms": round(point["latency_p99_ms"], 4),
        "latency_mean_ms": round(point["latency_mean_ms"], 4),
        "throughput": round(point["throughput"], 2),
        "torch_latency_p50_ms": round(torch32, 4) if torch32 else "",
        "speedup_vs_torch": round(torch32 / p50, 3) if torch32 else "",
        "torch_fp16_latency_p50_ms": round(torch16, 4) if torch16 else "",
        "speedup_vs_torch_fp16": round(torch16 / p50, 3) if torch16 else "",
        "verdict": validation["verdict"],
        "validation_passed": validation["verdict"] == "passed",
        **accuracy_columns(validation),
        "failures": " | ".join(validation.get("reference_problems", [])
                               + validation.get("failures", [])),
        "weights": weights.get("weights", ""),
        "calibration": calibration_column(precision_report or {}),
        "build_seconds": sidecar.get("build_seconds", ""),
        "layer_precisions": _format_counts(sidecar.get("layer_precisions")),
        "provenance": digest([benchmark.get("provenance"), validation.get("provenance"),
                              baseline.get("provenance")]),
    }


def error_row(cell: Mapping[str, Any], reason: str) -> Dict[str, Any]:
    """The row of a cell that did not finish in this run (a job failed or was killed)."""
    return {"model": cell["model"], "precision": cell["precision"],
            "batch_profile": cell["batch_profile"], "verdict": "error",
            "backend": cell.get("backend", ""), "validation_passed": False, "failures": reason}


def first_error(logs: Sequence[str]) -> str:
    """The first error of a cell's jobs (their logs in chain order, upstream first), from each
    log's last run: the trtflow error message, or the exception line of an unexpected failure."""
    for log in logs:
        path = Path(log)
        if not path.is_file():
            continue
        lines = path.read_text(errors="replace").splitlines()
        starts = [i for i, line in enumerate(lines) if " command: " in line]
        last_run = lines[starts[-1]:] if starts else lines
        for index, line in enumerate(last_run):
            if "trtflow error: " in line:
                return f"{path.name}: {line.split('trtflow error: ', 1)[1]}"
            if "unexpected failure:" in line:
                exception = [t for t in last_run[index + 1:] if t and not t.startswith(" ")]
                return f"{path.name}: {exception[-1] if exception else 'unexpected failure'}"
    return ("did not finish in this run, and no log names an error (killed, e.g. by the OOM "
            "killer or a signal?): " + ", ".join(Path(log).name for log in logs[-3:]))


def cell_artifacts(cell: Mapping[str, Any]) -> Tuple[Optional[Dict[str, Any]], str]:
    """The cell's JSON artifacts if all exist and were made from what the workflow asks for now
    (their recorded provenance is the expected one), else None and, for a file that exists but
    cannot be read, why: a stale or broken file is never current."""
    found = {}
    for kind in CELL_ARTIFACTS:
        path = Path(cell[kind])
        if not path.is_file():
            return None, ""
        try:
            data = read_json(path)
        except TrtflowError as error:  # corrupt (marked: the next run deletes and remakes it)
            return None, str(error).replace("\n", " ")
        expected = (cell.get("provenance") or {}).get(kind)
        if expected and data.get("provenance") != expected:
            return None, ""
        found[kind] = data
    return found, ""


def _round(value: Any) -> Any:
    return "" if value is None else round(float(value), 6)


def _format_counts(counts: Optional[Mapping[str, int]]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items())) if counts else ""


def latency_rows(cell: Mapping[str, str], benchmark: Mapping[str, Any],
                 baseline: Mapping[str, Any]) -> List[Dict[str, Any]]:
    sidecar = benchmark["sidecar"]
    rows = [{"model": cell["model"], "precision": cell["precision"],
             "batch_profile": cell["batch_profile"], "backend": sidecar["backend"],
             **{k: point[k] for k in ("batch", "latency_p50_ms", "latency_p99_ms", "throughput")}}
            for point in benchmark["batches"]]
    for variant in baseline["variants"]:
        rows += [{"model": cell["model"], "precision": variant["precision"],
                  "batch_profile": cell["batch_profile"], "backend": variant["variant"],
                  **{k: point[k] for k in ("batch", "latency_p50_ms", "latency_p99_ms",
                                           "throughput")}}
                 for point in variant["batches"]]
    return rows


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def summarize(cells: Sequence[Mapping[str, Any]], summary_path: Path, latency_path: Path) -> List[Dict[str, Any]]:
    """cells: dicts with model/precision/batch_profile, the paths of the benchmark, validation,
    baseline and weights JSONs, their expected provenance and the logs of the cell's jobs. A cell
    whose artifacts are missing or stale (a job failed) gets an `error` row with its first error."""
    rows, latency, seen = [], [], set()
    for cell in cells:
        artifacts, broken = cell_artifacts(cell)
        if artifacts is None:
            rows.append(error_row(cell, broken or first_error(cell.get("logs", []))))
            continue
        benchmark, baseline = artifacts["benchmark"], artifacts["baseline"]
        rows.append(summary_row(cell, benchmark, artifacts["validation"], baseline,
                                artifacts["weights"], artifacts["precision_report"]))
        for row in latency_rows(cell, benchmark, baseline):
            key = tuple(row[c] for c in ("model", "precision", "batch_profile", "backend", "batch"))
            if key not in seen:
                seen.add(key)
                latency.append(row)
    write_csv(summary_path, SUMMARY_COLUMNS, rows)
    write_csv(latency_path, LATENCY_COLUMNS, latency)
    return rows


def verdict_failures(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """One line per cell whose verdict fails the run (FAILING_VERDICTS), naming the cell."""
    return [f"{r['verdict']}: {r['model']} {r['precision']} {r['batch_profile']} "
            f"({r['backend']}): {r['failures']}" for r in rows if r["verdict"] in FAILING_VERDICTS]


def precision_debug_hint(rows: Sequence[Mapping[str, Any]], fallback_files: Mapping[str, str],
                         rerun: Optional[Mapping[str, Sequence[str]]] = None) -> Optional[str]:
    """For the failed cells a fallback list can help (`fallback_files`: '<model> <precision>' ->
    its debug_precision overlay): the command that names the layers losing the accuracy and
    writes a keep_precision list, and the one that applies it; both with the run's config
    (`rerun`, trtflow.commands), so that they run as printed."""
    from .commands import snakemake_command

    files = sorted({fallback_files[key] for key in (f"{r['model']} {r['precision']}" for r in rows
                                                     if r["verdict"] == "failed")
                    if key in fallback_files})
    if not files:
        return None
    rerun = rerun or {}
    return (f"for the failed int8/fp16 cells, `{snakemake_command(files, rerun)}` (or "
            f"`{snakemake_command(['debug_precision'], rerun)}`) names the layers that lose the "
            "accuracy and writes a keep_precision list; apply it with "
            f"`{snakemake_command(['all'], rerun, overlays=files)}`")


def _empty_plot(output: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}: no cell finished", ha="center", va="center")
    _save(fig, output)


def plot_latency_vs_batch(latency_csv: Path, output: Path) -> None:
    rows = _read_csv(latency_csv)
    if not rows:
        return _empty_plot(output, "Latency vs batch")
    plt = _pyplot()
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        series: Dict[str, Dict[int, float]] = {}
        for row in rows:
            if row["model"] != model:
                continue
            label = (row["backend"] if row["backend"].startswith("torch")
                     else f"{row['backend']} {row['precision']}")
            series.setdefault(label, {})[int(row["batch"])] = float(row["latency_p50_ms"])
        for label, points in sorted(series.items()):
            batches = sorted(points)
            style = "--" if label.startswith("torch") else "-"
            ax.plot(batches, [points[b] for b in batches], style, marker="o", label=label)
        ax.set(title=model, xlabel="batch", ylabel="p50 latency (ms)", xscale="log", yscale="log")
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Latency vs batch (median)")
    _save(fig, output)


def plot_accuracy_vs_speed(summary_csv: Path, output: Path) -> None:
    """Speed-up vs error per cell: colour = model, marker = precision, hollow = failed validation."""
    rows = [r for r in _read_csv(summary_csv) if r["rel_l2"] and r["speedup_vs_torch"]]
    if not rows:
        return _empty_plot(output, "Accuracy vs speed")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {"fp32": "o", "fp16": "s", "int8": "^"}
    models = sorted({r["model"] for r in rows})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    seen = set()
    for row in rows:
        error = max(float(row["rel_l2"]), 1e-9)  # log axis: an exact match sits at the floor
        passed = row["verdict"] == "passed"
        label = f"{row['model']} {row['precision']}"
        ax.scatter(float(row["speedup_vs_torch"]), error, marker=markers.get(row["precision"], "x"),
                   s=70, edgecolors=colors[row["model"]],
                   facecolors=colors[row["model"]] if passed else "none",
                   label=None if label in seen else label)
        seen.add(label)
    ax.set(xlabel="speed-up vs PyTorch eager fp32 (each batch profile's opt batch)",
           ylabel="relative L2 error vs PyTorch (log)", yscale="log",
           title="Accuracy vs speed (hollow marker: not passed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save(fig, output)


def _read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, output: Path) -> None:
    with atomic_path(output) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=110)
    fig.clear()
