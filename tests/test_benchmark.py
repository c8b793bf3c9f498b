"""trtflow.benchmark: latency statistics, profile batches, timing a real ONNX Runtime engine."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trtflow.benchmark import latency_stats, measure, profile_batches
from trtflow.runners.onnxruntime import OnnxRuntimeRunner, build_engine
from unit_helpers import exported, token_batch, token_spec


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
    directory = tmp_path_factory.mktemp("bench")
    _, onnx_path = exported(directory, "tokens", token_spec())
    engine = directory / "engine.onnx"
    build_engine(onnx_path, engine, directory / "engine.json", model="tokens", precision="fp32",
                 batch_profile={"min": 1, "opt": 2, "max": 5}, profile_name="p",
                 options={"intra_op_threads": 1, "graph_optimization_level": "all"})
    return engine


def test_measure_times_a_real_engine_at_each_batch(token_engine: Path) -> None:
    inputs = token_batch(3)  # shorter than the largest batch: repeated to fill it
    settings = {"warmup": 1, "iterations": 6, "max_seconds": 30}
    with OnnxRuntimeRunner(token_engine, token_engine.with_suffix(".json"), threads=1) as runner:
        results = measure(runner, inputs, [1, 2, 5], settings)
    assert [r["batch"] for r in results] == [1, 2, 5]
    for row in results:
        assert row["iterations"] == 6
        assert 0 < row["latency_min_ms"] <= row["latency_p50_ms"] <= row["latency_p99_ms"]
        assert row["throughput"] == pytest.approx(row["batch"] * 1e3 / row["latency_p50_ms"])
        assert np.isfinite(list(row.values())).all()


def test_measure_respects_max_seconds(token_engine: Path) -> None:
    settings = {"warmup": 0, "iterations": 100000, "max_seconds": 0.05}
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
