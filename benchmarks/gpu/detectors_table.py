#!/usr/bin/env python3
"""benchmarks/gpu/detectors.csv from results folders of `speed.sh deploy` / `speed.sh maskrcnn`
(issue 20's columns), one row per cell in each folder's summary.csv. `deploy_graph` is read from
the folder's patch.json (which NMS the efficient_nms pass made plugins of, and how); `run` names
the run so that several share the file, each ratio taken within its own run. RUN=RESULTS@int8
takes that folder's int8 cells only (a rerun of one cell in a folder whose other cells another
argument already gave).
  python3 benchmarks/gpu/detectors_table.py RUN=RESULTS[@PRECISION] [...] > benchmarks/gpu/detectors.csv
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
        graph = "ONNX NonMaxSuppression (TensorRT's INMSLayer)"
    else:
        parts = [f"{entry['node']}" + "".join(f" ({note})" for note in (
            f"{entry['class_images']} class images" if entry.get("class_images") else "",
            f"{len(entry['filters_as_mask'])} filters as mask" if entry.get("filters_as_mask") else "")
            if note) for entry in nms["rewritten"]]
        graph = "EfficientNMS_ONNX_TRT: " + "; ".join(parts)
    pyramids = passes.get("pyramid_roialign", {}).get("rewritten") or []
    if pyramids:
        graph += f"; RoI pooling: {len(pyramids)} x one GridSample over the FPN levels (pyramid_roialign)"
    return graph


def rows(run: str, results: Path, precision: str = "") -> Iterator[Dict[str, str]]:
    for cell in csv.DictReader(open(results / "summary.csv")):
        if cell.get("backend") != "tensorrt" or precision not in ("", cell["precision"]):
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
        run, _, target = argument.partition("=")
        folder, _, precision = target.partition("@")
        writer.writerows(rows(run, Path(folder), precision))
