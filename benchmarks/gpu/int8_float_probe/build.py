#!/usr/bin/env python3
"""Builds the int8_float probe's graphs (make.py) at optimisation level 3 and prints, per form,
the layer precisions the engine inspector reports (the Myelin regions' among them), the int8
layers, the reformats and the latency (CUDA graph, batch 8). Runs under the TensorRT Python:
    TRTPY_PATH=$PWD $TRT_PYTHON benchmarks/gpu/int8_float_probe/build.py /tmp/int8_float_probe
"""
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import numpy as np  # noqa: E402

from trtflow.runners.tensorrt import TensorRTRunner, build_engine  # noqa: E402

FORMS = [("fp16", "fp16", None), ("int8", "int8-fp32-graph", "builder"),
         ("int8", "int8-fp32-graph", "fp16_layers"), ("int8", "int8-fp16-graph", "fp16_graph")]


def main(folder: Path) -> None:
    feed = dict(np.load(folder / "feed.npz"))
    batch = int(feed["images"].shape[0])
    for precision, graph, form in FORMS:
        name = f"{graph}-{form or precision}"
        engine, sidecar_path = folder / f"{name}.engine", folder / f"{name}.json"
        try:
            sidecar = build_engine(folder / f"{graph}.onnx", engine, sidecar_path, model="probe",
                                   precision=precision,
                                   batch_profile={"min": 1, "opt": batch, "max": batch},
                                   profile_name="b", options={"optimization_level": 3,
                                                              "int8_float": form})
        except Exception as exc:  # a form TensorRT refuses is a result too
            print("RESULT", json.dumps({"form": name, "int8_float": form, "error": str(exc)[:600]}),
                  flush=True)
            continue
        layers = sidecar["layers"]
        myelin = [layer.get("precision") for layer in layers if layer.get("type") == "Myelin"]
        with TensorRTRunner(engine, sidecar_path, cuda_graph=True) as runner:
            runner.infer(feed)
            times = sorted(runner.time(feed, 20, 200, 5.0))
        print("RESULT", json.dumps({
            "form": name, "int8_float": form, "build_seconds": sidecar["build_seconds"],
            "layer_precisions": sidecar["layer_precisions"], "fp16_layers": sidecar.get("fp16_layers"),
            "myelin_precisions": dict(collections.Counter(myelin)),
            "myelin": [(layer["name"][:70], layer.get("precision")) for layer in layers
                       if layer.get("type") == "Myelin"],
            "reformats": sum(1 for layer in layers if layer.get("type") == "Reformat"),
            "p50_ms": round(times[len(times) // 2], 4)}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
