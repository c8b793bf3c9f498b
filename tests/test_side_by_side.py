"""trtflow.side_by_side: the engine and its PyTorch model timed in turn (issue 22 item 4), on a
real ONNX Runtime engine and the real PyTorch model in its worker process, quiet and beside
competing busy processes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from trtflow.data import batch_of
from trtflow.side_by_side import (TorchTimer, alternate, paired_speedup, side_by_side,
                                  time_side_by_side)
from unit_helpers import image_batch, ort_engine, resnet_spec

SETTINGS = {"warmup": 2, "iterations": 30, "windows": 3, "max_seconds": 3.0,
            "stability_tolerance": 0.1, "max_cpu_wait": 0.1, "side_by_side_pairs": 3}
BATCH = 2


def test_windows_alternate_abba_so_a_drift_hits_both_sides() -> None:
    order: List[str] = []

    def window(side: str):
        return lambda: order.append(side) or {"times_ms": [1.0], "cpu_times": (99, 1)}
    medians = alternate(window("engine"), window("torch"), 4)
    assert medians["engine"] == medians["torch"] == [1.0] * 4 and medians["cpu_wait_share"] == 0.01
    assert order == ["engine", "torch", "torch", "engine", "engine", "torch", "torch", "engine"]


def test_the_speedup_is_the_pairs_median_and_their_range_says_how_sure() -> None:
    # a load that doubles both sides of the second pair leaves its ratio as it was
    steady = paired_speedup([1.0, 2.0, 1.0], [4.0, 8.0, 4.0], 0.1)
    assert steady["speedup"] == 4.0 and steady["interval"] == [4.0, 4.0] and steady["stable"]
    # one on the PyTorch side only moves that pair's ratio: the range shows it
    skewed = paired_speedup([1.0, 1.0, 1.0], [4.0, 8.0, 4.2], 0.1)
    assert skewed["speedup"] == 4.2 and skewed["interval"] == [4.0, 8.0] and not skewed["stable"]
    # pairs that agree on a machine whose CPUs were taken: a steady load is no measurement
    assert not paired_speedup([1.0] * 3, [4.0] * 3, 0.1, cpu_wait=0.4, max_cpu_wait=0.1)["stable"]
    assert paired_speedup([1.0] * 3, [4.0] * 3, 0.1, cpu_wait=0.02, max_cpu_wait=0.1)["stable"]


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> Dict[str, Any]:
    """A small random ResNet's ONNX Runtime engine (one thread), its weights and a reference
    file of inputs, as the workflow's stages write them."""

    directory = tmp_path_factory.mktemp("side")
    spec = resnet_spec()
    engine = ort_engine(directory, "resnet", spec, {"min": 1, "opt": BATCH, "max": BATCH})
    reference = directory / "reference.npz"
    np.savez(reference, **{f"input:{k}": v for k, v in image_batch(4).items()})
    return {"engine": engine, "spec": spec, "weights": directory / "resnet.pt",
            "reference": reference}


def timer_args(resnet: Dict[str, Any], **overrides: Any) -> Dict[str, Any]:
    return {"python": sys.executable, "model": "resnet", "spec": resnet["spec"],
            "weights": str(resnet["weights"]), "reference": str(resnet["reference"]),
            "device": "cpu", "threads": 1, **overrides}


def timed(resnet: Dict[str, Any]) -> Dict[str, Any]:
    from trtflow.runners.onnxruntime import EngineRunner

    feed = batch_of(image_batch(4), BATCH)
    with EngineRunner(resnet["engine"], resnet["engine"].with_name("engine.json")) as runner, \
            TorchTimer(**timer_args(resnet)) as timer:
        return time_side_by_side(runner, feed, None, timer, BATCH, SETTINGS)


def test_a_busy_neighbour_leaves_the_speedup_in_its_interval_or_marks_it_unstable(resnet) -> None:
    quiet = timed(resnet)
    assert quiet["pairs"] == 3 and len(quiet["ratios"]) == 3 and quiet["torch"]["threads"] == 1
    assert quiet["interval"][0] <= quiet["speedup"] <= quiet["interval"][1]
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        loaded = timed(resnet)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    # the load was felt (4 spinning processes on this machine's cores), and seen ...
    assert loaded["engine_p50_ms"] > quiet["engine_p50_ms"] * 1.1, (quiet, loaded)
    assert loaded["cpu_wait_share"] > 0.2, loaded
    # ... and the speed-up measured under it either says it is unsure, or its interval holds
    # what the quiet machine measured
    overlaps = (loaded["interval"][0] <= quiet["interval"][1]
                and quiet["interval"][0] <= loaded["interval"][1])
    assert not loaded["stable"] or overlaps, (quiet, loaded)


def test_a_pytorch_model_that_cannot_load_leaves_the_separate_jobs_speedup_and_says_why(
        resnet, tmp_path: Path) -> None:
    from trtflow.runners.onnxruntime import EngineRunner

    with EngineRunner(resnet["engine"], resnet["engine"].with_name("engine.json")) as runner:
        result = side_by_side(runner, batch_of(image_batch(4), BATCH), None, BATCH, SETTINGS,
                              timer_args(resnet, weights=str(tmp_path / "missing.pt")))
    assert "PyTorch timer failed" in result["skipped"] and "missing.pt" in result["skipped"]
    assert side_by_side(None, {}, None, BATCH, {**SETTINGS, "side_by_side_pairs": 0},
                        timer_args(resnet)) == {"skipped": "benchmark.side_by_side_pairs is 0"}


def test_the_pytorch_worker_runs_in_the_workflows_environment_not_the_tensorrt_wrappers(
        resnet, tmp_path: Path) -> None:
    """A TensorRT Python that is a wrapper (the GPU machine's /tmp/trtpy) sets PYTHONPATH and
    PYTHONHOME for its own interpreter; the PyTorch worker it starts must not inherit them. The
    wrapper here puts a torch on PYTHONPATH that cannot be imported, as a Python 3.9 site would
    be to the PyTorch Python; the job's shell keeps its own values first, as the benchmark rule's
    does."""
    from trtflow.interpreter_env import shell_snapshot

    wrapper_site = tmp_path / "wrapper-site" / "torch"
    wrapper_site.mkdir(parents=True)
    (wrapper_site / "__init__.py").write_text("raise ImportError('the TensorRT Python site')\n")
    wrapper = tmp_path / "trt-python"
    wrapper.write_text(f"#!/bin/sh\nexport PYTHONPATH={wrapper_site.parent}:$PYTHONPATH\n"
                       f"exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    timer = dict(timer_args(resnet), spec=None)
    script = ("import json, sys; from trtflow.side_by_side import TorchTimer\n"
              f"args = {timer!r}; args['spec'] = json.loads(sys.argv[1])\n"
              "with TorchTimer(**args) as timer:\n"
              "    print(json.dumps(timer.time(2, 1, 3, 2.0)['times_ms']))\n")
    import json
    root = Path(__file__).resolve().parents[1]
    command = f"{shell_snapshot()} {wrapper} -c \"$0\" \"$1\""
    done = subprocess.run(["bash", "-c", command, script, json.dumps(resnet["spec"])],
                          capture_output=True, text=True, cwd=root, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(json.loads(done.stdout.strip().splitlines()[-1])) == 3
