#!/usr/bin/env python3
"""Markdown results table from one benchmark run of the workflow (benchmarks/*/run.sh).

Every ratio compares numbers measured in that one run, on the same machine and the same inputs:
the engine's median latency against PyTorch's at the same batch."""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
from pathlib import Path
from typing import Dict, List


def load(results: Path):
    rows = list(csv.DictReader(open(results / "summary.csv")))
    baselines = {(p.parent.parent.name, p.stem): json.loads(p.read_text())
                 for p in (results / "baseline").rglob("*.json")}
    sidecars = {}
    for path in (results / "engines").rglob("*.json"):
        data = json.loads(path.read_text())
        sidecars[(data["model"], data["precision"], data["batch_profile"])] = data
    return rows, baselines, sidecars


def torch_points(baseline: dict, batch: int) -> Dict[str, dict]:
    points = {}
    for variant in baseline["variants"]:
        for point in variant["batches"]:
            if int(point["batch"]) == int(batch):
                points[variant["variant"]] = point
    return points


def table(rows: List[dict], baselines: dict) -> List[str]:
    lines = []
    for (model, profile) in sorted({(r["model"], r["batch_profile"]) for r in rows}):
        cell_rows = [r for r in rows if r["model"] == model and r["batch_profile"] == profile]
        batch = int(cell_rows[0]["batch"])
        torch = torch_points(baselines[(model, profile)], batch)
        eager32 = torch["torch-eager-fp32"]["latency_p50_ms"]
        eager16 = torch.get("torch-eager-fp16", {}).get("latency_p50_ms")
        lines += [f"### {model}, batch {batch} (profile `{profile}`)", "",
                  "| runs | p50 ms | p99 ms | samples/s | speed-up vs eager fp32 |"
                  + (" vs eager fp16 |" if eager16 else "") + " rel. L2 vs PyTorch | layer precisions |",
                  "|---|---|---|---|---|" + ("---|" if eager16 else "") + "---|---|"]
        for name, point in torch.items():
            p50 = point["latency_p50_ms"]
            lines.append(f"| PyTorch {name[len('torch-'):]} | {p50:.3f} | {point['latency_p99_ms']:.3f} | "
                         f"{point['throughput']:.0f} | {eager32 / p50:.2f}x |"
                         + (f" {eager16 / p50:.2f}x |" if eager16 else "") + " | |")
        for row in cell_rows:
            p50 = float(row["latency_p50_ms"])
            lines.append(f"| {row['backend']} {row['precision']} | {p50:.3f} | "
                         f"{float(row['latency_p99_ms']):.3f} | {float(row['throughput']):.0f} | "
                         f"{eager32 / p50:.2f}x |" + (f" {eager16 / p50:.2f}x |" if eager16 else "")
                         + f" {float(row['rel_l2']):.2g} | {row['layer_precisions']} |")
        lines.append("")
    return lines


def build_times(results: Path, sidecars: dict) -> List[str]:
    cold_dir = results / "cold"
    if not cold_dir.exists():
        return []
    lines = ["## Engine build time: first build vs rebuild with the timing cache", "",
             "| engine | first build s (cache state) | rebuild s (cache state) | rebuild / first |",
             "|---|---|---|---|"]
    for path in sorted(cold_dir.glob("*.json")):
        cold = json.loads(path.read_text())
        warm = sidecars.get((cold["model"], cold["precision"], cold["batch_profile"]))
        if warm is None or warm["build_seconds"] == cold["build_seconds"]:
            lines.append(f"| {path.stem} | {cold['build_seconds']:.1f} ({cold['timing_cache']['state']}) | not rebuilt | |")
            continue
        lines.append(f"| {path.stem} | {cold['build_seconds']:.1f} ({cold['timing_cache']['state']}) | "
                     f"{warm['build_seconds']:.1f} ({warm['timing_cache']['state']}) | "
                     f"{warm['build_seconds'] / cold['build_seconds']:.2f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, help="the run's results_dir")
    parser.add_argument("output", type=Path, help="Markdown file to write")
    parser.add_argument("--title", default="trtflow benchmark")
    parser.add_argument("--notes", default="", help="Markdown appended after the tables")
    args = parser.parse_args()
    rows, baselines, sidecars = load(args.results)
    any_sidecar = next(iter(sidecars.values()))
    any_baseline = next(iter(baselines.values()))
    device = any_sidecar["device_name"]
    if any_sidecar.get("compute_capability"):
        device += f" (compute capability {any_sidecar['compute_capability']})"
    lines = [f"# {args.title}", "",
             f"- date: {datetime.date.today().isoformat()}",
             f"- device: {device}; PyTorch on `{any_baseline['device']}` with "
             f"{any_baseline['threads']} CPU threads",
             f"- {any_sidecar['backend']} {any_sidecar['version']}; PyTorch {any_baseline['torch']}; "
             f"Python {any_baseline.get('python', platform.python_version())} (PyTorch side)",
             "- one workflow run: engines and PyTorch timed in that run on the same inputs "
             "(the validation photos), each timing job alone on the machine; medians of the "
             "iterations in `benchmark` of the config", ""]
    lines += table(rows, baselines) + build_times(args.results, sidecars)
    if args.notes:
        lines += [args.notes, ""]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
