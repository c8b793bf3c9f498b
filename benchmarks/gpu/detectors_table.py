#!/usr/bin/env python3
"""benchmarks/gpu/detectors.csv from results folders of `speed.sh deploy` / `speed.sh maskrcnn`
(issue 20's columns), one row per cell in each folder's summary.csv. `deploy_graph` is read from
the folder's patch.json (which NMS the efficient_nms pass made plugins of, and how); `run` names
the run so that several share the file, each ratio taken within its own run.
  python3 benchmarks/gpu/detectors_table.py RUN=RESULTS [RUN=RESULTS ...] > benchmarks/gpu/detectors.csv
"""
import csv
import json
import sys
from pathlib import Path
from typing import Dict, Iterator

COLUMNS = ["model", "precision", "batch", "latency_p50_ms", "torch_fp32_latency_p50_ms",
           "speedup_vs_torch_fp32", "speedup_interval", "build_seconds", "verdict",
           "detection_recall", "mask_iou", "deploy_graph", "device", "run"]


def deploy_graph(results: Path, model: str) -> str:
    """The plugins the TensorRT graph uses, as the patch report says them."""
    report = results / "onnx" / model / "tensorrt" / "patch.json"
    if not report.exists():
        return ""
    passes = {p["pass"]: p for p in json.loads(report.read_text())["passes"]}
    nms = passes.get("efficient_nms", {})
    if not nms.get("rewritten"):
        return "ONNX NonMaxSuppression (TensorRT's INMSLayer)"
    parts = [f"{entry['node']}" + (f" ({entry['class_images']} class images)"
                                   if entry.get("class_images") else "")
             for entry in nms["rewritten"]]
    return "EfficientNMS_ONNX_TRT: " + "; ".join(parts)


def rows(run: str, results: Path) -> Iterator[Dict[str, str]]:
    for cell in csv.DictReader(open(results / "summary.csv")):
        if cell.get("backend") != "tensorrt":
            continue
        yield {"model": cell["model"], "precision": cell["precision"], "batch": cell["batch"],
               "latency_p50_ms": cell["latency_p50_ms"],
               "torch_fp32_latency_p50_ms": cell["torch_latency_p50_ms"],
               "speedup_vs_torch_fp32": cell["speedup_vs_torch"],  # empty where timing was unstable
               "speedup_interval": cell.get("speedup_interval", ""),
               "build_seconds": cell["build_seconds"], "verdict": cell["verdict"],
               "detection_recall": cell.get("detection_recall", ""), "mask_iou": cell.get("mask_iou", ""),
               "deploy_graph": deploy_graph(results, cell["model"]), "device": cell["device"], "run": run}


if __name__ == "__main__":
    writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
    writer.writeheader()
    for argument in sys.argv[1:]:
        run, _, folder = argument.partition("=")
        writer.writerows(rows(run, Path(folder)))
