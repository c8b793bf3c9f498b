"""Latency-aware int8 placement on TensorRT (issue 21): after an int8 build, compare the engine
with the model's fp16 engine region by region (per-layer profiles), take the Q/DQ off the
regions where int8 loses, rebuild, and keep the faster engine; a bounded number of rounds.

The Q/DQ come off in TensorRT's own network, parsed from the int8 ONNX: a compute layer's
dequantised input is rewired to the float tensor before its QuantizeLinear, and its int8 weights
to float weights (int8 x scale, computed once here), so no ONNX tooling is needed in the
TensorRT Python. The Q/DQ layers left without a consumer are pruned by the builder. Which
regions lose is trtflow.speed_placement's decision (pure Python, tested on the CPU).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

import numpy as np

from ..speed_placement import (better_round, nodes_to_keep_for_speed, region_costs,
                               why_no_rounds)

log = logging.getLogger(__name__)
# the placement's own side-by-side timings: shorter than the benchmark stage's, and fixed, so
# that editing benchmark settings does not rebuild int8 engines
TIMING = {"warmup": 10, "iterations": 50, "max_seconds": 5.0, "windows": 3,
          "stability_tolerance": 0.1, "max_cpu_wait": 0.1}  # as benchmark.max_cpu_wait's default
PROFILE_RUNS = 5


def _producers(network) -> Dict[str, Any]:
    producers = {}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for out in range(layer.num_outputs):
            producers[layer.get_output(out).name] = layer
    return producers


def _consumers(network) -> Dict[str, List[Any]]:
    consumers: Dict[str, List[Any]] = {}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for i in range(layer.num_inputs):
            tensor = layer.get_input(i)
            if tensor is not None:
                consumers.setdefault(tensor.name, []).append(layer)
    return consumers


def compute_types(trt) -> Set[Any]:
    names = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY", "FULLY_CONNECTED")
    return {getattr(trt.LayerType, n) for n in names if hasattr(trt.LayerType, n)}


def quantised_compute_layers(trt, network) -> Dict[str, Any]:
    """name -> layer of every convolution / MatMul whose data input is dequantised (int8)."""
    producers = _producers(network)
    compute = compute_types(trt)
    found = {}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type not in compute:
            continue
        source = producers.get(layer.get_input(0).name)
        if source is not None and source.type == trt.LayerType.DEQUANTIZE:
            found[layer.name] = layer
    return found


def _cast(layer, cls):
    """The layer as its own class (ILayer -> IActivationLayer ...), as Polygraphy does; on a
    fresh wrapper, since IActivationLayer.type then means the activation, not the layer type."""
    layer.__class__ = cls
    return layer


def clip_layers(trt, network) -> Set[str]:
    names = set()
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == trt.LayerType.ACTIVATION and \
                _cast(network.get_layer(index), trt.IActivationLayer).type == trt.ActivationType.CLIP:
            names.add(layer.name)
    return names


def clip_fault_closure(trt, network, drop: List[str], quantised: Mapping[str, Any]) -> List[str]:
    """`drop` plus every quantised layer that a dropped layer feeds through a Clip and a Q/DQ:
    TensorRT 8.6 computes a float Conv+Clip that feeds a QuantizeLinear wrongly (MobileNetV2
    rel. L2 1.08, benchmarks/gpu/int8.md), so the consumer leaves int8 with it (MobileNetV2's
    depthwise conv takes its projection conv along, as its keep list does by hand)."""
    consumers, clips = _consumers(network), clip_layers(trt, network)
    result, queue = list(drop), list(drop)
    while queue:
        layer = quantised[queue.pop()]
        for clip in consumers.get(layer.get_output(0).name, []):
            if clip.name not in clips:
                continue
            for q in consumers.get(clip.get_output(0).name, []):
                if q.type != trt.LayerType.QUANTIZE:
                    continue
                for dq in consumers.get(q.get_output(0).name, []):
                    for target in consumers.get(dq.get_output(0).name, []):
                        if target.name in quantised and target.name not in result:
                            result.append(target.name)
                            queue.append(target.name)
    return result


def float_weights(trt, dequantize, constant, scale) -> np.ndarray:
    """int8 weights x their (per-channel) scale, as float32."""
    weights = _constant(trt, constant).astype(np.float32)
    weights = weights.reshape(tuple(_cast(constant, trt.IConstantLayer).shape))
    scales = _constant(trt, scale).astype(np.float32)
    if scales.size > 1:
        axis = _cast(dequantize, trt.IDequantizeLayer).axis
        shape = [1] * weights.ndim
        shape[axis] = scales.size
        scales = scales.reshape(shape)
    return np.ascontiguousarray(weights * scales)


def _constant(trt, layer) -> np.ndarray:
    """A constant layer's values (a numpy view, or trt.Weights where that is what comes back)."""
    values = _cast(layer, trt.IConstantLayer).weights
    return np.array(values.numpy() if hasattr(values, "numpy") else values).ravel()


def bypass_quantisation(trt, network, names: List[str], keepalive: List[np.ndarray]) -> List[str]:
    """Take the named compute layers out of int8: each dequantised input is rewired to the float
    tensor its QuantizeLinear read, or to float weights. Returns the layers changed.
    `keepalive` holds the new weights until the build (TensorRT does not copy them before)."""
    producers = _producers(network)
    wanted = set(names)
    changed = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name not in wanted:
            continue
        for i in range(layer.num_inputs):
            tensor = layer.get_input(i)
            dequantize = producers.get(tensor.name) if tensor is not None else None
            if dequantize is None or dequantize.type != trt.LayerType.DEQUANTIZE:
                continue
            source = producers.get(dequantize.get_input(0).name)
            if source is not None and source.type == trt.LayerType.QUANTIZE:
                layer.set_input(i, source.get_input(0))
            elif source is not None and source.type == trt.LayerType.CONSTANT:
                scale = producers.get(dequantize.get_input(1).name)
                array = float_weights(trt, dequantize, source, scale)
                keepalive.append(array)
                constant = network.add_constant(array.shape, trt.Weights(array))
                constant.name = f"{layer.name}/float_weights_{i}"
                layer.set_input(i, constant.get_output(0))
        changed.append(layer.name)
    return changed


def measure_serialized(serialized, layers: List[Mapping[str, Any]],
                       feed: Mapping[str, np.ndarray], runner_class) -> Tuple[float, Dict[str, Any]]:
    """measure_engine of an engine just built (written to a scratch file to be loaded)."""
    with tempfile.TemporaryDirectory(prefix="trtflow-speed-") as folder:
        path = Path(folder) / "candidate.engine"
        path.write_bytes(bytes(serialized))
        return measure_engine(path, feed, runner_class, layers=layers)


def measure_engine(path: Path, feed: Mapping[str, np.ndarray], runner_class,
                   sidecar: Optional[Path] = None,
                   layers: Optional[List[Mapping[str, Any]]] = None) -> Tuple[float, Dict[str, Any]]:
    """(CUDA-graph p50 ms, layer profile) of an engine on `feed`: the benchmark stage's timing
    and profile, shorter."""
    from ..benchmark import layer_profile, time_batch
    from .base import adapt_feed

    with runner_class(path, sidecar, cuda_graph=True) as runner:
        if layers is not None:  # the inspector's table of a build not yet written with a sidecar
            runner.sidecar = {"layers": list(layers)}
        batch_feed = adapt_feed(feed, runner.inputs, "speed placement")
        batch = int(next(iter(batch_feed.values())).shape[0])
        stats = time_batch(runner, batch_feed, batch, TIMING)
        profile = layer_profile(runner, batch_feed, batch, PROFILE_RUNS)
    return float(stats["latency_p50_ms"]), profile


def place_for_speed(trt, network, rebuild: Callable[[], Tuple[Any, List[Dict[str, Any]]]],
                    serialized, layers: List[Dict[str, Any]], settings: Mapping[str, Any],
                    feed: Mapping[str, np.ndarray],
                    runner_class) -> Tuple[Any, List[Dict[str, Any]], Dict[str, Any]]:
    """Up to `settings["rounds"]` rounds of: profile the int8 engine, drop int8 from the regions
    that lose to the fp16 engine (`settings["fp16_engine"]`, `["fp16_sidecar"]`), rebuild; a
    round is kept if faster by `settings["margin"]`. Returns the fastest engine (serialized),
    its layer table and the report for the sidecar."""
    rounds, margin = int(settings["rounds"]), float(settings["margin"])
    fp16_ms, fp16_profile = measure_engine(Path(settings["fp16_engine"]), feed, runner_class,
                                           sidecar=Path(settings["fp16_sidecar"]))
    best_ms, profile = measure_serialized(serialized, layers, feed, runner_class)
    report: Dict[str, Any] = {"fp16_ms": fp16_ms, "rounds": [{"round": 0, "ms": best_ms,
                                                              "dropped": []}],
                              "kept_for_speed": []}
    skipped = why_no_rounds(best_ms, fp16_ms, margin, str(settings.get("when", "slower")))
    if skipped:
        log.info("speed placement: %s", skipped)
        report["skipped"] = skipped
        rounds = 0
    quantised = quantised_compute_layers(trt, network)
    keepalive: List[np.ndarray] = []
    best = (serialized, layers)
    for round_index in range(1, rounds + 1):
        costs = region_costs(profile, fp16_profile, best[1], quantised)
        drop = nodes_to_keep_for_speed(costs, report["kept_for_speed"])
        report["rounds"][-1]["losing_regions"] = [c.to_dict() for c in costs if c.loses][:20]
        if not drop:
            break
        drop = clip_fault_closure(trt, network, drop, quantised)
        bypass_quantisation(trt, network, drop, keepalive)
        log.info("speed placement round %d: %d of %d int8 regions lose to fp16; rebuilding with "
                 "%d node(s) out of int8: %s", round_index, sum(c.loses for c in costs),
                 len(costs), len(drop), drop[:5])
        candidate = rebuild()
        if candidate[0] is None:
            report["rounds"].append({"round": round_index, "dropped": drop, "error": "build failed"})
            break
        ms, candidate_profile = measure_serialized(candidate[0], candidate[1], feed, runner_class)
        kept = better_round(ms, best_ms, margin)
        report["rounds"].append({"round": round_index, "ms": ms, "dropped": drop, "kept": kept})
        if not kept:
            break
        best, best_ms, profile = candidate, ms, candidate_profile
        report["kept_for_speed"] += drop
        quantised = {k: v for k, v in quantised.items() if k not in drop}
    report["int8_ms"] = best_ms
    report["speedup_vs_fp16"] = fp16_ms / best_ms if best_ms else None
    return best[0], best[1], report
