"""Summary stage: one table row per model x precision x batch profile x backend, and the plots."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .io import atomic_path, read_json

SUMMARY_COLUMNS = [
    "model", "precision", "batch_profile", "backend", "backend_version", "device", "batch",
    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms", "throughput",
    "torch_latency_p50_ms", "speedup_vs_torch", "torch_fp16_latency_p50_ms",
    "speedup_vs_torch_fp16", "validation_passed", "max_abs", "rel_l2", "cosine",
    "top1_agreement", "top5_agreement", "pixel_agreement", "miou", "failures", "weights", "build_seconds", "layer_precisions",
]
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


def _first_output_metrics(validation: Mapping[str, Any]) -> Mapping[str, Any]:
    outputs = validation.get("outputs") or {}
    return next(iter(outputs.values()), {})


def summary_row(cell: Mapping[str, str], benchmark: Mapping[str, Any],
                validation: Mapping[str, Any], baseline: Mapping[str, Any],
                weights: Mapping[str, Any]) -> Dict[str, Any]:
    sidecar = benchmark["sidecar"]
    opt = int(sidecar["profile"]["opt"])
    point = _at_batch(benchmark["batches"], opt) or benchmark["batches"][-1]
    torch32 = _baseline(baseline, "torch-eager-fp32", point["batch"])
    torch16 = _baseline(baseline, "torch-eager-fp16", point["batch"])
    metrics = _first_output_metrics(validation)
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
        "validation_passed": bool(validation["passed"]),
        **{k: _round(metrics.get(k)) for k in ("max_abs", "rel_l2", "cosine", "top1_agreement",
                                                 "top5_agreement", "pixel_agreement", "miou")},
        "failures": " | ".join(validation.get("failures", [])),
        "weights": weights.get("weights", ""),
        "build_seconds": sidecar.get("build_seconds", ""),
        "layer_precisions": _format_counts(sidecar.get("layer_precisions")),
    }


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


def summarize(cells: Sequence[Mapping[str, str]], summary_path: Path, latency_path: Path) -> List[Dict[str, Any]]:
    """cells: dicts with model/precision/batch_profile and the paths of benchmark, validation,
    baseline and weights JSONs."""
    rows, latency, seen = [], [], set()
    for cell in cells:
        benchmark, baseline = read_json(cell["benchmark"]), read_json(cell["baseline"])
        rows.append(summary_row(cell, benchmark, read_json(cell["validation"]), baseline,
                                read_json(cell["weights"])))
        for row in latency_rows(cell, benchmark, baseline):
            key = tuple(row[c] for c in ("model", "precision", "batch_profile", "backend", "batch"))
            if key not in seen:
                seen.add(key)
                latency.append(row)
    write_csv(summary_path, SUMMARY_COLUMNS, rows)
    write_csv(latency_path, LATENCY_COLUMNS, latency)
    return rows


def plot_latency_vs_batch(latency_csv: Path, output: Path) -> None:
    rows = _read_csv(latency_csv)
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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {"fp32": "o", "fp16": "s", "int8": "^"}
    models = sorted({r["model"] for r in rows})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    seen = set()
    for row in rows:
        error = max(float(row["rel_l2"]), 1e-9)  # log axis: an exact match sits at the floor
        passed = row["validation_passed"] == "True"
        label = f"{row['model']} {row['precision']}"
        ax.scatter(float(row["speedup_vs_torch"]), error, marker=markers.get(row["precision"], "x"),
                   s=70, edgecolors=colors[row["model"]],
                   facecolors=colors[row["model"]] if passed else "none",
                   label=None if label in seen else label)
        seen.add(label)
    ax.set(xlabel="speed-up vs PyTorch eager fp32 (each batch profile's opt batch)",
           ylabel="relative L2 error vs PyTorch (log)", yscale="log",
           title="Accuracy vs speed (hollow marker: validation failed)")
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
