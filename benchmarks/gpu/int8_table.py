#!/usr/bin/env python3
"""int8.csv and int8.md from one run of benchmarks/gpu/int8.sh (issue 10's table).

Every ratio compares two cells of that one run: int8 against fp16 of the same model, batch and
GPU. The placement column says who placed the int8 graph's Q/DQ (trtflow.precision.place_qdq);
float cells have none."""
from __future__ import annotations

import argparse
import csv
import datetime
import json
from pathlib import Path
from typing import Dict, List

COLUMNS = ["model", "precision", "batch_profile", "batch", "throughput", "latency_p50_ms",
           "build_seconds", "validation_passed", "placement", "run"]
METRICS = ["rel_l2", "cosine", "top1_agreement"]


def rows_of(results: Path) -> List[Dict[str, str]]:
    return [r for r in csv.DictReader(open(results / "summary.csv")) if r.get("batch")]


def machine(results: Path) -> Dict[str, str]:
    sidecar = json.loads(next((results / "engines").rglob("*.json")).read_text())
    return {"gpu": sidecar.get("device_name", "?"), "tensorrt": sidecar.get("version", "?")}


def write_csv(runs: Dict[str, List[Dict[str, str]]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for label, rows in runs.items():
            for row in rows:
                writer.writerow({**{k: row.get(k, "") for k in COLUMNS}, "run": label,
                                 "placement": "trtflow" if row["precision"] == "int8" else ""})


def markdown(label: str, rows: List[Dict[str, str]], results: Path) -> str:
    info = machine(results)
    lines = [f"## Run {label} ({results})", "",
             f"- device: {info['gpu']}; TensorRT {info['tensorrt']}", "",
             "| model | batch | fp16 img/s | int8 img/s | int8 / fp16 | int8 p50 ms | "
             "build s (fp16 / int8) | int8 verdict | int8 rel. L2 | int8 top-1 agr. |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    cells = {(r["model"], r["precision"], r["batch"]): r for r in rows}
    for (model, precision, batch), int8 in sorted(cells.items()):
        if precision != "int8":
            continue
        fp16 = cells.get((model, "fp16", batch), {})
        ratio = (f"{float(int8['throughput']) / float(fp16['throughput']):.2f}x"
                 if fp16.get("throughput") and int8.get("throughput") else "")
        lines.append(f"| {model} | {batch} | {fp16.get('throughput', '')} | {int8['throughput']} "
                     f"| {ratio} | {int8['latency_p50_ms']} | {fp16.get('build_seconds', '')} / "
                     f"{int8['build_seconds']} | {int8['verdict']} | {int8.get('rel_l2', '')} | "
                     f"{int8.get('top1_agreement', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="folder for int8.csv and int8-tables.md")
    parser.add_argument("runs", nargs="+", help="LABEL=RESULTS_DIR of each run, or RESULTS_DIR")
    args = parser.parse_args()
    runs = dict(run.split("=", 1) if "=" in run else ("a", run) for run in args.runs)
    tables = {label: rows_of(Path(results)) for label, results in runs.items()}
    write_csv(tables, args.out / "int8.csv")
    text = f"# int8 against fp16 on TensorRT ({datetime.date.today()}), one table per run\n\n"
    text += "\n".join(markdown(label, tables[label], Path(results)) for label, results in runs.items())
    (args.out / "int8-tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
