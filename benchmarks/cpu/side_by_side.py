#!/usr/bin/env python3
"""What a competing load does to the engine-vs-PyTorch speed-up, measured three ways on this
CPU: the benchmark stage's side-by-side windows (trtflow.side_by_side, with the run-queue wait
of trtflow.contention), and the ratio of separate jobs (the engine timed quiet, PyTorch under
the load: a neighbour that starts between two jobs).

    python3 benchmarks/cpu/side_by_side.py [--busy 0 1 2 4] [--model resnet18] [--size 64]

The model (torchvision, random weights) goes through the workflow's own weights, export and
ONNX Runtime engine stages (fp32, 1 thread; PyTorch 1 thread); each load is that many
`while True: pass` processes. Prints a markdown table."""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

BATCH = 2
SETTINGS = {"warmup": 2, "iterations": 30, "windows": 3, "max_seconds": 3.0,
            "stability_tolerance": 0.1, "max_cpu_wait": 0.1, "side_by_side_pairs": 3}


def build(directory: Path, model: str, size: int):
    import numpy as np

    from trtflow.config import validate_config
    from trtflow.export import export_onnx
    from trtflow.runners.onnxruntime import build_engine
    from trtflow.weights import prepare_weights

    entry = {"architecture": model, "task": "classification", "weights": {"random": True},
             "inputs": [{"name": "input", "shape": [3, size, size], "dtype": "float32"}],
             "outputs": ["logits"]}
    spec = validate_config({"models": {model: entry}, "precisions": ["fp32"],
                            "batch_profiles": {"p": {"min": 1, "opt": BATCH, "max": BATCH}}}
                           )["models"][model]
    weights = directory / "w.pt"
    prepare_weights(model, spec, directory / "cache", weights, directory / "w.json")
    onnx_path = directory / "m.onnx"
    export_onnx(model, spec, str(weights), onnx_path, directory / "export.json", 17)
    engine = directory / "engine.onnx"
    build_engine(onnx_path, engine, directory / "engine.json", model=model, precision="fp32",
                 batch_profile={"min": 1, "opt": BATCH, "max": BATCH}, profile_name="p",
                 options={"intra_op_threads": 1, "graph_optimization_level": "all"})
    reference = directory / "reference.npz"
    inputs = np.random.default_rng(0).normal(size=(BATCH, 3, size, size)).astype(np.float32)
    np.savez(reference, **{"input:input": inputs})
    return spec, weights, engine, reference, {"input": inputs}


def spinners(count: int):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(processes) -> None:
    for process in processes:
        process.kill()
        process.wait()


def main() -> None:
    import numpy as np
    import onnxruntime
    import torch

    from trtflow.cpu import instruction_set
    from trtflow.runners.onnxruntime import EngineRunner
    from trtflow.side_by_side import TorchTimer, time_side_by_side

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp())
    spec, weights, engine, reference, feed = build(directory, args.model, args.size)
    timer_args = {"python": sys.executable, "model": args.model, "spec": spec,
                  "weights": str(weights), "reference": str(reference), "device": "cpu",
                  "threads": 1}
    rows, quiet_engine = [], None
    for count in args.busy:
        load = spinners(count)
        try:
            with EngineRunner(engine, directory / "engine.json") as runner, \
                    TorchTimer(**timer_args) as timer:
                paired = time_side_by_side(runner, feed, None, timer, BATCH, SETTINGS)
                torch_alone = float(np.median(timer.time(BATCH, 2, 30, 3.0)["times_ms"]))
        finally:
            stop(load)
        if quiet_engine is None:
            quiet_engine = paired["engine_p50_ms"]
        rows.append((count, paired, torch_alone / quiet_engine))
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    print(f"{args.model} {args.size}x{args.size}, batch {BATCH}, fp32, ONNX Runtime "
          f"{onnxruntime.__version__} and PyTorch {torch.__version__} eager, 1 thread each; "
          f"{cpu}, {len(__import__('os').sched_getaffinity(0))} CPUs, {instruction_set()}; "
          f"Python {platform.python_version()}\n")
    print("| busy processes | side by side: speed-up | pairs' range | CPU wait | stable | "
          "separate jobs (engine quiet, PyTorch loaded) |")
    print("|---|---|---|---|---|---|")
    for count, paired, separate in rows:
        low, high = paired["interval"]
        print(f"| {count} | {paired['speedup']:.2f}x | {low:.2f}-{high:.2f} | "
              f"{paired['cpu_wait_share']:.0%} | {'yes' if paired['stable'] else 'no'} | "
              f"{separate:.2f}x |")


if __name__ == "__main__":
    main()
