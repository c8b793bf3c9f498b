#!/usr/bin/env python3
"""Markdown table for runs of config/hard_models.yaml (benchmarks/gpu/hard_models.sh).

Reads each run's JSON outputs (validation, benchmark, baseline, engine sidecars, patch reports,
weights), so it also tabulates a run in which some cells failed and no summary.csv was written.
Given several runs, a (model, precision) cell comes from the last run that built it (a later run
that redid some models); the `run` column says which. Every ratio compares numbers of one run:
engine median latency against PyTorch eager's at the same batch and precision, on the same GPU."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/make_table.py
from make_table import torch_points  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")
# patch passes that did nothing are not "needed": these report keys say that a pass changed the graph
CHANGED = {"inline_empty_guards": "inlined", "roialign_to_gridsample": "rewritten",
           "int64_inputs_to_int32": "converted", "decompose_layernorm": "decomposed"}


def read(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def eager_p50(baseline: dict, precision: str, batch: int) -> Optional[float]:
    point = torch_points(baseline, batch).get(f"torch-eager-{precision}")
    return point["latency_p50_ms"] if point else None


def passes_needed(patch: dict) -> str:
    done = [p["pass"] for p in patch["passes"] if p.get(CHANGED.get(p["pass"], ""), None)]
    folded = next((p for p in patch["passes"] if p["pass"] == "fold_constants"), None)
    if folded:
        done.append(f"fold_constants ({folded['before']['nodes']}->{folded['after']['nodes']} nodes)")
    return ", ".join(done)


def verdict(validation: Optional[dict]) -> str:
    if validation is None:
        return "no engine"
    if validation["passed"]:
        detections = validation.get("detections")
        if detections:
            extra = [f"{k} {detections[k]:.3g}" for k in ("mask_iou", "keypoint_distance") if k in detections]
            return "pass (" + ", ".join([f"recall {detections['detection_recall']:.3g}",
                                         f"box IoU {detections['matched_box_iou']:.4g}"] + extra) + ")"
        return "pass"
    return "FAIL: " + "; ".join(validation["failures"])[:160]


def weights_note(results: Path, model: str) -> str:
    meta = read(results / "weights" / f"{model}.json")
    if meta is None:
        return "?"
    return "random" if meta["weights"] == "random" else Path(meta["source"]).name


def cell(results: Path, model: str, precision: str, run: str, needed: str) -> str:
    sidecars = sorted((results / "engines" / model).rglob(f"{precision}-*.json"))
    weights = weights_note(results, model)
    if not sidecars:
        return (f"| {model} | {weights} | {run} | {precision} | | | | | build failed "
                f"(see failed-engine-logs) | {needed} |")
    sidecar = read(sidecars[0])
    stem = sidecars[0].stem
    tag = sidecars[0].parent.name
    bench = read(results / "benchmark" / model / tag / f"{stem}.json")
    baseline = read(next((results / "baseline" / model).rglob(f"{sidecar['batch_profile']}.json")))
    validation = read(results / "validation" / model / tag / f"{stem}.json")
    point = bench["batches"][0]
    eager = eager_p50(baseline, "fp16" if precision != "fp32" else "fp32", point["batch"])
    ratio = f"{eager / point['latency_p50_ms']:.2f}x" if eager else ""
    return (f"| {model} | {weights} | {run} | {precision} | {point['batch']} | "
            f"{point['latency_p50_ms']:.3f} | {eager:.3f} | {ratio} | {verdict(validation)} | {needed} |")


def rows(runs: Sequence[Path]) -> List[str]:
    names = [chr(ord("a") + i) if len(runs) > 1 else "" for i in range(len(runs))]
    models = sorted({d.name for results in runs for d in (results / "validation").iterdir()})
    lines = []
    for model in models:
        have = [i for i, results in enumerate(runs) if (results / "validation" / model).is_dir()]
        for precision in PRECISIONS:
            built = [i for i in have
                     if any((runs[i] / "engines" / model).rglob(f"{precision}-*.json"))]
            index = built[-1] if built else have[0]
            patch = read(next((runs[index] / "onnx" / model).rglob("patch.json")))
            lines.append(cell(runs[index], model, precision, names[index],
                              passes_needed(patch) if patch else "?"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, nargs="+",
                        help="results directories of runs, earliest first (run a, b, ...)")
    args = parser.parse_args()
    header = ("| model | weights | run | precision | batch | engine p50 ms | eager p50 ms (same "
              "precision; fp16 for int8) | eager / engine | validation | patch passes that changed the graph |")
    print(header)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for line in rows(args.results):
        print(line)


if __name__ == "__main__":
    main()
