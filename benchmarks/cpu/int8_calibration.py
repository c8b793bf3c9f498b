#!/usr/bin/env python3
"""MobileNetV2 (ImageNet weights) int8 accuracy per calibration method and mixed-precision list,
for TensorRT's form (symmetric s8s8, simulated exactly by ONNX Runtime with Q/DQ unfused) and
ONNX Runtime's form for this CPU (u8s8 with VNNI, u8u8 without, run by its own int8 kernels).

Every graph is made by trtflow.precision.make_precision, as the precision stage makes it; logits
are compared against the fp32 graph on the validation photos (8: the workflow's default set, and
20: the 10 photos and their mirror images). Writes a markdown table.
  python benchmarks/cpu/int8_calibration.py RESULTS_DIR OUT.md
RESULTS_DIR: a workflow run's results with results/onnx/mobilenet_v2/onnxruntime/patched.onnx
(e.g. `snakemake --cores 2 all` on config/config.yaml with backend: onnxruntime).
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from trtflow.calibration import calibration_arrays  # noqa: E402
from trtflow.cpu import instruction_set, int8_form  # noqa: E402
from trtflow.data import input_set  # noqa: E402
from trtflow.runners.onnxruntime import cpu_name  # noqa: E402
from trtflow.precision import make_precision  # noqa: E402

SPEC = [{"name": "input", "shape": [3, 224, 224], "dtype": "float32", "data": "imagenet_samples"}]
FIRST_DEPTHWISE = "/inner/features/features.1/conv/conv.0/conv.0.0/Conv"
VARIANTS: List[Tuple[str, str, Dict]] = [
    ("minmax", "minmax", {}),
    ("entropy (2048 -> 128 bins)", "entropy", {}),
    ("percentile 99.99", "percentile", {}),
    ("percentile 99.99 + first depthwise conv kept fp16", "percentile",
     {"fp16": {"nodes": [FIRST_DEPTHWISE]}}),
]


def run(path: Path, feed: Dict[str, np.ndarray], fused: bool) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=["WeightBiasQuantization"])
    return np.concatenate([session.run(None, {"input": feed["input"][i:i + 1]})[0]
                           for i in range(feed["input"].shape[0])])


def metrics(out: np.ndarray, ref: np.ndarray, count: int) -> str:
    rel = np.linalg.norm(out[:count] - ref[:count]) / np.linalg.norm(ref[:count])
    top1 = np.mean(out[:count].argmax(1) == ref[:count].argmax(1))
    return f"{rel:.3f} / {top1:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    patched = args.results / "onnx/mobilenet_v2/onnxruntime/patched.onnx"
    feed, _ = input_set("mobilenet_v2", SPEC, 20, "validation")
    reference = run(patched, feed, fused=False)
    calibration = calibration_arrays("mobilenet_v2", SPEC, 32, seed=0)
    form = int8_form(instruction_set())
    lines = [f"# int8 calibration on MobileNetV2 ({datetime.date.today()})", "",
             f"- CPU: {cpu_name()} ({instruction_set()}), ONNX Runtime {onnxruntime.__version__}, "
             f"form here: {form}",
             f"- command: `python benchmarks/cpu/int8_calibration.py RESULTS_DIR {args.out}`",
             "- cells: logits rel. L2 / top-1 agreement against the fp32 graph; 32 calibration "
             "crops; 8 = the workflow's validation set, 20 = 10 photos and their mirror images", "",
             "| ranges | TensorRT form, 8 | TensorRT form, 20 | ONNX Runtime " + form + ", 8 "
             "| ONNX Runtime " + form + ", 20 |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        for label, method, keep in VARIANTS:
            cells = []
            for backend, fused in (("tensorrt", False), ("onnxruntime", True)):
                graph = Path(scratch) / f"{backend}-{method}-{len(keep)}.onnx"
                make_precision("mobilenet_v2", "int8", patched, graph, graph.with_suffix(".json"),
                               backend, calibration, {"method": method, "percentile": 99.99,
                                                      "cache_dir": scratch},
                               int8_form=form, keep_precision=keep)
                out = run(graph, feed, fused)
                cells += [metrics(out, reference, 8), metrics(out, reference, 20)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
