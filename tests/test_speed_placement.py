"""trtflow.speed_placement: the latency-aware int8 placement's decisions, from per-layer
profiles given as data (the TensorRT side, trtflow.runners.tensorrt_speed, runs in test_gpu)."""
from __future__ import annotations

from typing import Any, Dict, List

import pytest

from trtflow.profiling import summarize_profile
from trtflow.speed_placement import (better_round, layer_nodes, nodes_to_keep_for_speed,
                                     region_costs, reformats_into, why_no_rounds)

CONV_A, CONV_B, CONV_C = "/a/Conv", "/b/Conv", "/c/Conv"


def of(layers: Dict[str, float]) -> Dict[str, Any]:
    return summarize_profile({name: {"times_ms": [ms], "type": ""} for name, ms in layers.items()},
                             batch=1, runs=1)


def table(*rows: tuple) -> List[Dict[str, str]]:
    return [{"name": name, "type": "", "precision": precision} for name, precision in rows]


INT8_LAYERS = table((f"{CONV_A} + /a/Relu", "int8"), (CONV_B, "int8"),
                    (f"/q/QuantizeLinear + {CONV_C}", "int8"), ("/head/Softmax", "fp16"),
                    (f"Reformatting CopyNode for Input Tensor 0 to {CONV_B}", "int8"))
INT8 = of({f"{CONV_A} + /a/Relu": 0.5, CONV_B: 0.30,
           f"Reformatting CopyNode for Input Tensor 0 to {CONV_B}": 0.25,
           f"/q/QuantizeLinear + {CONV_C}": 0.2, "/head/Softmax": 0.1})
FP16 = of({f"{CONV_A} + /a/Relu": 0.9, f"{CONV_B} + {CONV_C}": 0.4, "/head/Softmax": 0.1})


def test_layer_nodes_splits_fused_names_but_not_myelin_regions() -> None:
    assert layer_nodes(f"{CONV_A} + /a/Relu") == [CONV_A, "/a/Relu"]
    assert layer_nodes("{ForeignNode[/t/MatMul.../t/Softmax]}") == []


def test_reformats_are_charged_to_the_layer_they_feed() -> None:
    times = {f"Reformatting CopyNode for Input Tensor 0 to {CONV_B}": 0.25,
             f"Reformatting CopyNode for Output Tensor 0 to {CONV_B}": 0.05, CONV_B: 0.3}
    assert reformats_into(times) == {CONV_B: pytest.approx(0.3)}


def test_region_costs_compare_the_int8_and_fp16_layers_that_hold_the_same_nodes() -> None:
    costs = {c.layer: c for c in region_costs(INT8, FP16, INT8_LAYERS, [CONV_A, CONV_B, CONV_C])}
    # fp16 fuses B and C into one layer: int8's B and C layers are one region against it
    assert set(costs) == {f"{CONV_A} + /a/Relu", CONV_B}
    a = costs[f"{CONV_A} + /a/Relu"]
    assert (a.int8_ms, a.fp16_ms, a.loses) == (0.5, 0.9, False)
    bc = costs[CONV_B]  # 0.30 + its reformat 0.25 + 0.2 against 0.4
    assert bc.int8_ms == pytest.approx(0.75) and bc.fp16_ms == pytest.approx(0.4) and bc.loses
    assert bc.nodes == [CONV_B, CONV_C]
    assert bc.fp16_layers == [f"{CONV_B} + {CONV_C}"]
    assert bc.int8_layers == [CONV_B, f"/q/QuantizeLinear + {CONV_C}"]


def test_layer_nodes_lists_the_nodes_of_fused_pointwise_layers() -> None:
    assert layer_nodes(f"{CONV_A} + PWN(PWN(/a/Sigmoid), /a/Mul)") == [CONV_A, "/a/Sigmoid",
                                                                        "/a/Mul"]
    assert layer_nodes(f"Reformatting CopyNode for Input Tensor 0 to {CONV_A}") == []


def test_a_silu_that_int8_cannot_fuse_is_charged_to_the_int8_region() -> None:
    """efficientnet_v2_s on TensorRT 8.6 (H200): fp16 fuses each convolution with its SiLU; int8
    runs the convolution, a reformat and the SiLU as three layers. The convolution alone is faster
    in int8 (0.05 against 0.08 ms), the region is not (0.10)."""
    silu = "PWN(PWN(/a/Sigmoid), /a/Mul)"
    int8 = of({CONV_A: 0.05, f"Reformatting CopyNode for Input Tensor 0 to {silu}": 0.02,
               silu: 0.03})
    fp16 = of({f"{CONV_A} + {silu}": 0.08})
    [cost] = region_costs(int8, fp16, table((CONV_A, "int8"), (silu, "fp16")), [CONV_A])
    assert cost.int8_ms == pytest.approx(0.10) and cost.fp16_ms == pytest.approx(0.08)
    assert cost.loses and cost.nodes == [CONV_A] and cost.int8_layers == sorted([CONV_A, silu])


def test_regions_without_quantised_nodes_or_an_fp16_counterpart_are_skipped() -> None:
    assert region_costs(INT8, FP16, INT8_LAYERS, ["/other/Conv"]) == []
    no_fp16 = of({"/head/Softmax": 0.1})
    assert region_costs(INT8, no_fp16, INT8_LAYERS, [CONV_A, CONV_B]) == []
    fp16_layers = table((f"{CONV_A} + /a/Relu", "fp16"))  # not int8: nothing to take off
    assert region_costs(INT8, FP16, fp16_layers, [CONV_A]) == []


def test_nodes_kept_for_speed_are_the_losing_regions_largest_loss_first() -> None:
    costs = region_costs(INT8, FP16, INT8_LAYERS, [CONV_A, CONV_B, CONV_C])
    assert nodes_to_keep_for_speed(costs) == [CONV_B, CONV_C]
    assert nodes_to_keep_for_speed(costs, already=[CONV_B, CONV_C]) == []
    slower = of({f"{CONV_A} + /a/Relu": 1.5, CONV_B: 0.45, f"/q/QuantizeLinear + {CONV_C}": 0.2})
    costs = region_costs(slower, FP16, INT8_LAYERS, [CONV_A, CONV_B, CONV_C])
    assert nodes_to_keep_for_speed(costs) == [CONV_A, CONV_B, CONV_C]  # A loses 0.6 ms, B+C 0.25
    assert nodes_to_keep_for_speed(costs, limit=1) == [CONV_A]


@pytest.mark.parametrize("candidate, best, margin, kept", [
    (0.90, 1.0, 0.02, True), (0.99, 1.0, 0.02, False), (1.10, 1.0, 0.02, False),
    (0.99, 1.0, 0.0, True)])
def test_a_round_is_kept_only_when_faster_beyond_the_noise_margin(candidate, best, margin,
                                                                   kept) -> None:
    assert better_round(candidate, best, margin) is kept


@pytest.mark.parametrize("int8_ms, fp16_ms, when, skipped", [
    (1.90, 2.50, "slower", True),    # efficientnet_v2_s on the H200: 1.32x, no rebuild
    (2.49, 2.50, "slower", False),   # within the margin: not faster, the rounds run
    (2.96, 1.86, "slower", False),   # RT-DETR's int8 at 0.63x: the rounds run
    (1.90, 2.50, "always", False)])
def test_rounds_run_only_for_an_int8_engine_not_already_faster(int8_ms, fp16_ms, when,
                                                              skipped) -> None:
    reason = why_no_rounds(int8_ms, fp16_ms, 0.02, when)
    assert (reason is not None) is skipped
    if skipped:
        assert "1.32x" in reason and "when: always" in reason


def test_the_placements_own_timings_carry_every_setting_the_benchmark_timing_reads() -> None:
    """The placement times engines with fixed settings (runners.tensorrt_speed.TIMING), through
    the benchmark stage's time_batch: a setting that stage reads and TIMING lacks stopped every
    int8 build on the H200 (KeyError: 'max_cpu_wait'). Its values are the schema's defaults."""
    from trtflow.benchmark import time_batch
    from trtflow.config import section_defaults
    from trtflow.runners.tensorrt_speed import TIMING

    class Runner:
        name = "fake"

        def time_modes(self) -> List[str]:
            return ["plain"]

        def time(self, feed, warmup, iterations, seconds, mode) -> List[float]:
            return [1.0] * iterations

    stats = time_batch(Runner(), {}, 1, TIMING)
    assert stats["stable"] and stats["latency_p50_ms"] == 1.0
    defaults = section_defaults("benchmark")
    assert TIMING["max_cpu_wait"] == defaults["max_cpu_wait"]
    assert TIMING["stability_tolerance"] == defaults["stability_tolerance"]
