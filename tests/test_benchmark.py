"""trtflow.benchmark: latency statistics, profile batches, timing a real ONNX Runtime engine."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trtflow.benchmark import latency_stats, measure, profile_batches
from trtflow.config import section_defaults
from trtflow.runners.onnxruntime import OnnxRuntimeRunner
from unit_helpers import ort_engine, token_batch, token_spec

BENCHMARK = section_defaults("benchmark")


def test_latency_stats_on_a_known_list() -> None:
    times = [float(t) for t in range(1, 11)]  # 1 .. 10 ms
    stats = latency_stats(times, batch=4)
    assert stats == {
        "batch": 4, "iterations": 10,
        "latency_p50_ms": pytest.approx(5.5), "latency_p90_ms": pytest.approx(9.1),
        "latency_p99_ms": pytest.approx(9.91), "latency_mean_ms": pytest.approx(5.5),
        "latency_min_ms": 1.0, "throughput": pytest.approx(4 * 1000 / 5.5)}


def test_latency_stats_are_order_independent_and_use_the_median_for_throughput() -> None:
    stats = latency_stats([10.0, 2.0, 2.0, 2.0, 100.0], batch=8)
    assert stats["latency_p50_ms"] == 2.0 and stats["latency_min_ms"] == 2.0
    assert stats["latency_mean_ms"] == pytest.approx(23.2)
    assert stats["throughput"] == pytest.approx(4000.0)  # 8 samples per 2 ms, outlier ignored


def test_latency_stats_of_a_single_time() -> None:
    stats = latency_stats([3.0], batch=1)
    assert stats["iterations"] == 1
    assert stats["latency_p50_ms"] == stats["latency_p99_ms"] == stats["latency_min_ms"] == 3.0


@pytest.mark.parametrize("profile, expected", [
    ({"min": 1, "opt": 8, "max": 32}, [1, 8, 32]),
    ({"min": 4, "opt": 4, "max": 16}, [4, 16]),
    ({"min": 2, "opt": 2, "max": 2}, [2]),
])
def test_profile_batches_without_repeats_in_order(profile, expected) -> None:
    assert profile_batches(profile) == expected


@pytest.fixture(scope="module")
def token_engine(tmp_path_factory) -> Path:
    return ort_engine(tmp_path_factory.mktemp("bench"), "tokens", token_spec(),
                      {"min": 1, "opt": 2, "max": 5})


def test_measure_times_a_real_engine_at_each_batch(token_engine: Path) -> None:
    inputs = token_batch(3)  # shorter than the largest batch: repeated to fill it
    settings = {**BENCHMARK, "warmup": 1, "iterations": 6, "max_seconds": 30}
    with OnnxRuntimeRunner(token_engine, token_engine.with_suffix(".json"), threads=1) as runner:
        results = measure(runner, inputs, [1, 2, 5], settings)
    assert [r["batch"] for r in results] == [1, 2, 5]
    for row in results:
        assert row["iterations"] == 6
        assert 0 < row["latency_min_ms"] <= row["latency_p50_ms"] <= row["latency_p99_ms"]
        assert row["throughput"] == pytest.approx(row["batch"] * 1e3 / row["latency_p50_ms"])
        numbers = [v for v in row.values() if isinstance(v, (int, float))] + row["window_p50_ms"]
        assert np.isfinite(numbers).all() and len(row["window_p50_ms"]) == BENCHMARK["windows"]


def test_measure_respects_max_seconds(token_engine: Path) -> None:
    settings = {**BENCHMARK, "warmup": 0, "iterations": 100000, "max_seconds": 0.05}
    with OnnxRuntimeRunner(token_engine) as runner:
        (row,) = measure(runner, token_batch(2), [2], settings)
    assert 3 <= row["iterations"] < 100000


def test_hard_models_table_takes_each_cell_from_the_last_run_that_built_it() -> None:
    """benchmarks/gpu/hard_models_table.py over the committed TensorRT runs: run b redid Mask
    R-CNN fp32/fp16 only, so those rows come from b, its failed int8 build and the other models
    from a."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
    from hard_models_table import rows

    runs = REPO / "benchmarks" / "gpu" / "runs" / "2026-11-21-hard-models-shapes"
    table = {tuple(c.strip() for c in line.split("|")[1:5]): line for line in rows([runs / "a", runs / "b"])}
    mask = "maskrcnn_r50_fpn", "maskrcnn_r50_fpn_shapes.pt"
    assert "| pass (recall 1, box IoU 0.9572, mask_iou 0.929) |" in table[(*mask, "b", "fp16")]
    assert "build failed" in table[(*mask, "a", "int8")]
    assert "| pass (" in table[("rtdetr_r18", "rtdetr_r18_shapes.pt", "a", "fp16")]
    assert "roialign_to_gridsample" in table[(*mask, "b", "fp32")]
    assert len(table) == 15  # 5 models x 3 precisions


def test_windows_agree_within_the_tolerance_or_the_noise_floor() -> None:
    from trtflow.benchmark import window_agreement

    steady = window_agreement([10.0, 10.2, 9.9, 10.1, 10.3, 10.0], windows=3, tolerance=0.1)
    assert steady["stable"] and steady["window_p50_ms"] == [10.1, 10.0, 10.15]
    jumped = window_agreement([10.0, 10.1, 10.0, 10.2, 14.0, 15.0], windows=3, tolerance=0.1)
    assert not jumped["stable"] and jumped["spread"] == pytest.approx(14.5 / 10.05 - 1)
    tiny = window_agreement([0.001, 0.001, 0.003, 0.003, 0.002, 0.002], windows=3, tolerance=0.1)
    assert tiny["stable"]  # 2 microseconds apart: under the timer's noise floor
    assert not window_agreement([1.0, 1.0], windows=3, tolerance=0.1)["stable"]  # too few


class Contended:
    """A runner whose first blocks are disturbed: block k takes the k-th list of times."""

    name = "contended"

    def __init__(self, blocks):
        self.blocks = list(blocks)
        self.budgets = []

    def time_modes(self):
        return ["default"]

    def time(self, feed, warmup, iterations, max_seconds, mode=None):
        self.budgets.append(max_seconds)
        return self.blocks.pop(0) if len(self.blocks) > 1 else self.blocks[0]


def test_an_unstable_block_is_measured_again_until_its_windows_agree() -> None:
    runner = Contended([[5.0, 5.0, 9.0, 9.0, 5.0, 5.0], [5.0, 5.1, 5.0, 5.0, 5.1, 5.0]])
    # (the fake runner's blocks take microseconds: the CPU-wait check is not what is tested)
    (row,) = measure(runner, token_batch(2), [2], {**BENCHMARK, "iterations": 6, "max_cpu_wait": 1})
    assert row["stable"] and row["blocks"] == 2 and row["latency_p50_ms"] == 5.0
    assert runner.budgets[0] == BENCHMARK["max_seconds"] and runner.budgets[1] < runner.budgets[0]


def test_a_block_that_never_agrees_is_reported_unstable_when_the_budget_ends() -> None:
    runner = Contended([[5.0, 5.0, 9.0, 9.0, 5.0, 5.0]])
    (row,) = measure(runner, token_batch(2), [2], {**BENCHMARK, "max_seconds": 0.05,
                                                    "max_cpu_wait": 1})
    assert not row["stable"] and row["blocks"] >= 1 and row["window_p50_ms"] == [5.0, 9.0, 5.0]
    assert row["spread"] == pytest.approx(0.8)


def test_windows_that_agree_under_a_steady_load_are_not_stable(token_engine: Path) -> None:
    """Four spinning processes slow every window alike, so the windows agree; the threads'
    run-queue wait (trtflow.contention) says the machine was not free."""
    import subprocess
    import sys

    # blocks of about 0.3 s: a thread inside its time slice has not waited yet
    settings = {**BENCHMARK, "warmup": 2, "iterations": 5000, "max_seconds": 1.0}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        with OnnxRuntimeRunner(token_engine, token_engine.with_suffix(".json"),
                               threads=1) as runner:
            (row,) = measure(runner, token_batch(2), [2], settings)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert row["cpu_wait_share"] > 0.2 and not row["stable"], row
