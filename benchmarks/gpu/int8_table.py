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
           "build_seconds", "validation_passed", "placement"]
METRICS = ["rel_l2", "cosine", "top1_agreement"]


def rows_of(results: Path) -> List[Dict[str, str]]:
    return [r for r in csv.DictReader(open(results / "summary.csv")) if r.get("batch")]


def machine(results: Path) -> Dict[str, str]:
    sidecar = json.loads(next((results / "engines").rglob("*.json")).read_text())
    return {"gpu": sidecar.get("device_name", "?"), "tensorrt": sidecar.get("version", "?")}


def write_csv(rows: List[Dict[str, str]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**{k: row.get(k, "") for k in COLUMNS},
                             "placement": "trtflow" if row["precision"] == "int8" else ""})


def markdown(rows: List[Dict[str, str]], results: Path) -> str:
    info = machine(results)
    lines = [f"# int8 against fp16 on TensorRT ({datetime.date.today()})", "",
             f"- device: {info['gpu']}; TensorRT {info['tensorrt']}",
             "- one workflow run: `TRT_PYTHON=/tmp/trtpy bash benchmarks/gpu/int8.sh` "
             "(config benchmarks/gpu/int8.yaml); machine-readable: int8.csv", "",
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
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    rows = rows_of(args.results)
    write_csv(rows, args.out / "int8.csv")
    (args.out / "int8.md").write_text(markdown(rows, args.results))
    print((args.out / "int8.md").read_text())


if __name__ == "__main__":
    main()
