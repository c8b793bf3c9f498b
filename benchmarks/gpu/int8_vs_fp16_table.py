#!/usr/bin/env python3
"""benchmarks/gpu/int8-vs-fp16.csv from a results folder of `speed.sh int8` (issue 21's columns),
one row per cell whose benchmark exists; cells of an interrupted run are left out. `run` names
the run (its date) so that the rows of several runs can share the file, each ratio within one run.
  RUN=2026-12-03 python3 benchmarks/gpu/int8_vs_fp16_table.py RESULTS [RESULTS_WARM] > rows.csv
"""
import csv
import json
import os
import sys
from pathlib import Path

COLUMNS = ["model", "precision", "batch", "throughput", "latency_p50_ms", "eager_latency_p50_ms",
           "build_seconds", "build_seconds_warm", "timing_cache", "verdict", "rel_l2",
           "top1_agreement", "kept_for_speed", "speed_placement_rounds_ms", "run"]


def rows(results: Path, warm: Path = None):
    for path in sorted(results.glob("benchmark/*/*/*.json")):
        benchmark = json.loads(path.read_text())
        sidecar = benchmark["sidecar"]
        opt = int(sidecar["profile"]["opt"])
        point = next(p for p in benchmark["batches"] if int(p["batch"]) == opt)
        model, tag, name = path.parts[-3], path.parts[-2], path.name
        validation = results / "validation" / model / tag / name
        verdict, metrics = "", {}
        if validation.exists():
            cell = json.loads(validation.read_text())
            verdict, metrics = cell["verdict"], next(iter(cell["outputs"].values()))
        warm_sidecar = (warm / "engines" / model / tag / name) if warm else None
        speed = sidecar.get("speed_placement") or {}
        yield {"model": model, "precision": sidecar["precision"], "batch": opt,
               "throughput": round(point["throughput"]), "latency_p50_ms": round(point["latency_p50_ms"], 4),
               "eager_latency_p50_ms": round(point.get("eager_latency_p50_ms", 0), 4),
               "build_seconds": sidecar["build_seconds"],
               "build_seconds_warm": (json.loads(warm_sidecar.read_text())["build_seconds"]
                                      if warm_sidecar and warm_sidecar.exists() else ""),
               "timing_cache": sidecar["timing_cache"]["state"], "verdict": verdict,
               "rel_l2": round(metrics.get("rel_l2", 0), 5), "top1_agreement": metrics.get("top1_agreement", ""),
               "kept_for_speed": " ".join(speed.get("kept_for_speed", [])),
               "speed_placement_rounds_ms": " ".join(f"{r['ms']:.4g}" for r in speed.get("rounds", []) if "ms" in r),
               "run": os.environ.get("RUN", "")}


if __name__ == "__main__":
    writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None))
