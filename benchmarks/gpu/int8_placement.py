#!/usr/bin/env python3
"""Issue 10, item 1: where the Q/DQ go, side by side on ResNet-50 on TensorRT 8.6.

Three placements of one calibrated int8 ResNet-50, built with the same profile and builder level
as the fp16 engine of the same network, timed at batch 256 in one run:
- `onnxruntime`: what the precision stage did before (ONNX Runtime's quantize_static, QDQ,
  symmetric, per channel, every op ONNX Runtime can quantise);
- `trtflow`: what the precision stage does now for TensorRT (trtflow.precision.to_int8: the same
  quantiser on TENSORRT_INT8_OPS, reduced to TensorRT's rules by place_qdq, then named tensorrt_placement);
- `modelopt`: NVIDIA ModelOpt's ONNX PTQ (`modelopt.onnx.quantization.quantize`, CPU
  calibration), which places Q/DQ by TensorRT's fusion rules.

    python3 benchmarks/gpu/int8_placement.py prepare WORKDIR      # PyTorch Python: ONNX files
    $TRT_PYTHON benchmarks/gpu/int8_placement.py build WORKDIR    # TensorRT Python: engines, timing
    python3 benchmarks/gpu/int8_placement.py table WORKDIR        # markdown + int8.csv rows

Each step skips what WORKDIR already holds, so a step cut off by a command limit resumes.
Weights are seeded random with batch-norm statistics measured on the calibration images (a random
ResNet-50's activations otherwise fade to ~1e-14, which leaves nothing to calibrate); accuracy is
against the fp32 ONNX on ONNX Runtime, under the workflow's built-in int8 classification gates.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SPEC = [{"name": "input", "shape": [3, 224, 224], "dtype": "float32", "data": "imagenet_samples"}]
PROFILE = {"min": 1, "opt": 256, "max": 256}
BATCH = 256
CALIBRATION_SAMPLES = 32
VALIDATION_SAMPLES = 16
# engine name -> (ONNX file, builder flags on TensorRT 8.x); the slow one last
ENGINES = {
    "fp16": ("fp16.onnx", ["FP16"]),
    "int8-trtflow": ("int8-trtflow.onnx", ["FP16", "INT8"]),
    "int8-modelopt": ("int8-modelopt.onnx", ["FP16", "INT8"]),
    "int8-onnxruntime": ("int8-onnxruntime.onnx", ["FP16", "INT8"]),
}
BUILD_LIMIT_S = 300


def prepare(work: Path) -> None:
    import numpy as np
    import torch
    import torchvision

    from trtflow.data import input_set
    from trtflow.detection import _normalise_batch_norms
    from trtflow.precision import to_fp16, to_int8

    work.mkdir(parents=True, exist_ok=True)
    calibration, _ = input_set("resnet50", SPEC, CALIBRATION_SAMPLES, "calibration")
    validation, _ = input_set("resnet50", SPEC, VALIDATION_SAMPLES, "validation")
    np.save(work / "calibration.npy", calibration["input"])
    fp32 = work / "fp32.onnx"
    if not fp32.exists():
        torch.manual_seed(0)
        model = torchvision.models.resnet50(weights=None).eval()
        images = torch.from_numpy(calibration["input"])
        _normalise_batch_norms(model, lambda: model(images))
        torch.onnx.export(model, (images[:1],), str(fp32), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    _reference(fp32, validation["input"], work / "reference.npz")
    if not (work / "fp16.onnx").exists():
        to_fp16(fp32, work / "fp16.onnx")
    seconds: Dict[str, float] = _read(work / "quantise_seconds.json")
    if not (work / "int8-onnxruntime.onnx").exists():
        start = time.perf_counter()
        _every_op(fp32, work / "int8-onnxruntime.onnx", calibration)
        seconds["onnxruntime"] = round(time.perf_counter() - start, 1)
    if not (work / "int8-trtflow.onnx").exists():
        start = time.perf_counter()
        to_int8(fp32, work / "int8-trtflow.onnx", calibration, "tensorrt", "minmax")
        seconds["trtflow"] = round(time.perf_counter() - start, 1)
    if not (work / "int8-modelopt.onnx").exists():
        start = time.perf_counter()
        _modelopt(fp32, work / "int8-modelopt.onnx", calibration["input"])
        seconds["modelopt"] = round(time.perf_counter() - start, 1)
    (work / "quantise_seconds.json").write_text(json.dumps(seconds))
    print(json.dumps({"placements": {name: _qdq_census(work / f"int8-{name}.onnx")
                                     for name in ("onnxruntime", "trtflow", "modelopt")},
                      "quantise_seconds": seconds}, indent=1))


def _every_op(source: Path, output: Path, calibration) -> None:
    """The precision stage's TensorRT int8 before it followed TensorRT's rules: ONNX Runtime's
    quantiser on every op it can quantise, TensorRT's symmetric settings."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    from trtflow.calibration import ArrayCalibrationReader
    from trtflow.precision import quantization_settings

    quantize_static(str(source), str(output), ArrayCalibrationReader(calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax, **quantization_settings("tensorrt"))


def _modelopt(source: Path, output: Path, images) -> None:
    """ModelOpt's int8 PTQ on a private copy (it writes scratch files next to its input), the
    non-quantised part left fp32 (FP16 comes from the builder flag on 8.x), brought back to opset
    17 for TensorRT 8.6's parser."""
    import shutil
    import tempfile

    import onnx
    from modelopt.onnx.quantization import quantize

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "model.onnx"
        shutil.copyfile(source, copy)
        quantize(onnx_path=str(copy), quantize_mode="int8", calibration_data=images,
                 calibration_method="entropy", calibration_eps=["cpu"],
                 calibration_shapes=f"input:{len(images)}x3x224x224",
                 high_precision_dtype="fp32", output_path=str(Path(scratch) / "q.onnx"))
        model = onnx.load(str(Path(scratch) / "q.onnx"))
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if opset > 17:
            model = onnx.version_converter.convert_version(model, 17)
        onnx.save(model, str(output))


def _reference(fp32: Path, images, path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    if path.exists():
        return
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    np.savez(path, input=images, logits=session.run(None, {"input": images})[0])


def _qdq_census(path: Path) -> Dict[str, Any]:
    """How many Q/DQ pairs, and the op types whose inputs they feed."""
    import collections

    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node.op_type)
    fed = collections.Counter(op for node in graph.node if node.op_type == "DequantizeLinear"
                              for op in consumers[node.output[0]])
    return {"quantize_linear": sum(n.op_type == "QuantizeLinear" for n in graph.node),
            "dequantize_feeds": dict(fed.most_common()),
            "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}


def build(work: Path, only: List[str]) -> None:
    """Each engine in its own process, stopped after BUILD_LIMIT_S: a build that does not finish
    in that time is a result (issue 10's bound is 180 s), recorded as such."""
    for name in only or list(ENGINES):
        if (work / f"{name}.json").exists():
            continue
        try:
            done = subprocess.run([sys.executable, __file__, "build-one", str(work), name],
                                  timeout=BUILD_LIMIT_S)
            print(f"{name}: exit {done.returncode}", flush=True)
        except subprocess.TimeoutExpired:
            (work / f"{name}.json").write_text(json.dumps(
                {"engine": name, "flags": ENGINES[name][1], "did_not_finish_s": BUILD_LIMIT_S}))
            print(f"{name}: no engine after {BUILD_LIMIT_S} s", flush=True)


def build_one(work: Path, name: str) -> None:
    import numpy as np

    from trtflow.runners import tensorrt as trt_runner
    from trtflow.validate import compare

    onnx_file, flags = ENGINES[name]
    # the flags under test, whatever the precision stage would ask for today
    trt_runner.precision_flags = lambda trt, precision, strongly_typed: flags
    engine, sidecar = work / f"{name}.plan", work / f"{name}.sidecar.json"
    built = trt_runner.build_engine(work / onnx_file, engine, sidecar, model="resnet50",
                                    precision="int8" if name.startswith("int8") else "fp16",
                                    batch_profile=PROFILE, profile_name="throughput",
                                    options={"optimization_level": 3, "workspace_mib": 8192})
    reference = np.load(work / "reference.npz")
    with trt_runner.TensorRTRunner(engine, sidecar) as runner:
        logits = runner.infer({"input": reference["input"]})["logits"]
        batch = np.resize(reference["input"], (BATCH, 3, 224, 224)).astype(np.float32)
        times = sorted(runner.time({"input": batch}, warmup=10, iterations=100, max_seconds=20))
    p50 = times[len(times) // 2]
    tolerances = {"rel_l2": 0.25, "cosine_min": 0.97, "top1_agreement_min": 0.75,
                  "top5_agreement_min": 0.6}  # config/schema.yaml: classification int8
    if name == "fp16":
        tolerances = {"rel_l2": 1.0e-2, "cosine_min": 0.9999, "top1_agreement_min": 1.0}
    result = compare({"logits": logits}, {"logits": reference["logits"]}, "classification",
                     tolerances, [f"s{i}" for i in range(len(logits))])
    (work / f"{name}.json").write_text(json.dumps({
        "engine": name, "flags": flags, "build_seconds": built["build_seconds"],
        "layer_precisions": built["layer_precisions"], "batch": BATCH,
        "latency_p50_ms": round(p50, 4), "throughput": round(BATCH / p50 * 1000, 1),
        "verdict": result["verdict"], "failures": result["failures"],
        "metrics": result["outputs"]["logits"], "device": built["device_name"],
        "tensorrt": built["version"]}, indent=1))


def table(work: Path) -> None:
    rows = [_read(work / f"{name}.json") for name in ENGINES]
    seconds = _read(work / "quantise_seconds.json")
    fp16 = next((r for r in rows if r.get("engine") == "fp16"), {})
    print("| engine | builder flags | build s | batch 256 p50 ms | img/s | vs fp16 | rel L2 | "
          "top-1 agreement | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in zip(ENGINES, rows):
        if "throughput" not in row:
            limit = f"no engine after {row['did_not_finish_s']} s" if row else "not built"
            print(f"| {name} | {'+'.join(ENGINES[name][1])} | {limit} | | | | | | |")
            continue
        speed = row["throughput"] / fp16["throughput"] if fp16 else float("nan")
        print(f"| {name} | {'+'.join(row['flags'])} | {row['build_seconds']:.0f} | "
              f"{row['latency_p50_ms']:.3f} | {row['throughput']:.0f} | {speed:.2f}x | "
              f"{row['metrics']['rel_l2']:.4f} | {row['metrics'].get('top1_agreement', 0):.3f} | "
              f"{row['verdict']} |")
    print(f"\nquantisation on the CPU: {seconds}")
    with open(work / "int8.csv", "w") as handle:
        handle.write("model,precision,batch_profile,batch,throughput,latency_p50_ms,"
                     "build_seconds,validation_passed,placement\n")
        for name, row in zip(ENGINES, rows):
            if "throughput" in row:
                precision, _, placement = name.partition("-")
                handle.write(f"resnet50,{precision},throughput,{row['batch']},{row['throughput']},"
                             f"{row['latency_p50_ms']},{row['build_seconds']},"
                             f"{row['verdict'] == 'passed'},{placement or 'none'}\n")


def _read(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


if __name__ == "__main__":
    step, work = sys.argv[1], Path(sys.argv[2])
    if step == "prepare":
        prepare(work)
    elif step == "build":
        build(work, sys.argv[3:])
    elif step == "build-one":
        build_one(work, sys.argv[3])
    else:
        table(work)
