"""Latency-aware int8 placement: which int8 regions of a TensorRT engine lose to fp16, from the
per-layer profiles of the int8 engine and of the same model's fp16 engine (issue 21).

TensorRT fuses a Q/DQ'd convolution (or MatMul) with what surrounds it into one engine layer
whose name joins the ONNX node names ("/layer1/conv1/Conv + /layer1/relu/Relu"), and it inserts
reformat layers ("Reformatting CopyNode for Input Tensor 0 to <layer>") where int8 and fp16
regions meet. A region here is the set of int8 engine layers, grown from one holding quantised
compute nodes, that hold the same ONNX nodes as a set of fp16 engine layers, each side with the
reformats that feed it. Where the int8 region takes longer, its nodes are kept out of int8 for speed.

Standard library only: it runs in the TensorRT Python (trtflow.runners.tensorrt_speed applies
the decision to the network) and is tested on the CPU with profiles given as data.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

REFORMAT_TARGET = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (.+)$")


@dataclass(frozen=True)
class RegionCost:
    """One int8 region's time against its fp16 counterpart (ms, medians of the profile runs)."""

    layer: str               # the region's first int8 compute layer
    nodes: List[str]         # its quantised compute nodes (ONNX node names)
    int8_ms: float           # its int8 engine layers and the reformats into them
    fp16_ms: float           # the fp16 layers holding the same nodes, and their reformats
    fp16_layers: List[str]
    int8_layers: List[str] = field(default_factory=list)  # every int8-engine layer of the region

    @property
    def loses(self) -> bool:
        return self.int8_ms > self.fp16_ms

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "loses": self.loses}


# TensorRT names a fused pointwise layer after its nodes: "PWN(PWN(/a/Sigmoid), /a/Mul)"
POINTWISE_WRAPPER = re.compile(r"PWN\(|\)")


def layer_nodes(layer_name: str) -> List[str]:
    """The ONNX node names a fused engine layer is named after. TensorRT joins them with ' + ',
    and lists a fused pointwise layer's nodes inside PWN(...); a Myelin region
    ("{ForeignNode[first...last]}") names only its ends and is not split."""
    if layer_name.startswith("{ForeignNode") or REFORMAT_TARGET.match(layer_name):
        return []
    unwrapped = POINTWISE_WRAPPER.sub("", layer_name)
    parts = (part.strip() for chunk in unwrapped.split(" + ") for part in chunk.split(", "))
    return [part for part in parts if part]


def layer_times(profile: Mapping[str, Any]) -> Dict[str, float]:
    """layer name -> ms of a trtflow.profiling layer profile."""
    return {layer["name"]: float(layer["ms"]) for layer in profile.get("layers", [])}


def reformats_into(times: Mapping[str, float]) -> Dict[str, float]:
    """Reformat time by the layer it feeds (TensorRT names a reformat after its consumer)."""
    into: Dict[str, float] = {}
    for name, ms in times.items():
        match = REFORMAT_TARGET.match(name)
        if match:
            into[match.group(1)] = into.get(match.group(1), 0.0) + ms
    return into


def layers_by_node(times: Mapping[str, float]) -> Dict[str, Set[str]]:
    """ONNX node name -> the engine layers (of one profile) named after it."""
    holding: Dict[str, Set[str]] = {}
    for name in times:
        for node in layer_nodes(name):
            holding.setdefault(node, set()).add(name)
    return holding


def matched_layers(start: str, int8_holding: Mapping[str, Set[str]],
                   fp16_holding: Mapping[str, Set[str]]) -> Tuple[Set[str], Set[str]]:
    """The int8 and fp16 engine layers that hold the same ONNX nodes, grown from one int8 layer.

    The two engines fuse differently: fp16 runs a convolution with its SiLU in one layer
    ("Conv + PWN(Sigmoid, Mul)") where int8 may need the convolution, a reformat and a separate
    pointwise layer. Comparing the int8 convolution alone with the fused fp16 layer would leave
    the pointwise layer and its reformat out of int8's side (efficientnet_v2_s on the H200: 164
    reformats, 29 % of the int8 engine's time, mostly into such layers). So both sides grow until
    they cover the same nodes."""
    int8_side, fp16_side = {start}, set()
    while True:
        nodes = {n for layer in int8_side | fp16_side for n in layer_nodes(layer)}
        more_int8 = {l for n in nodes for l in int8_holding.get(n, ())} - int8_side
        more_fp16 = {l for n in nodes for l in fp16_holding.get(n, ())} - fp16_side
        if not more_int8 and not more_fp16:
            return int8_side, fp16_side
        int8_side |= more_int8
        fp16_side |= more_fp16


def region_costs(int8_profile: Mapping[str, Any], fp16_profile: Mapping[str, Any],
                 int8_layers: Sequence[Mapping[str, Any]],
                 compute_nodes: Iterable[str]) -> List[RegionCost]:
    """Every int8 region's cost against fp16.

    `int8_layers`: the int8 engine's inspector table (name, type, precision); `compute_nodes`:
    the ONNX names of the graph's quantised compute nodes (the convolutions and MatMuls whose
    inputs pass through Q/DQ). A region is grown from each int8 layer holding quantised nodes
    (`matched_layers`); one whose nodes the fp16 profile does not show is skipped: it cannot be
    compared."""
    quantised: Set[str] = set(compute_nodes)
    int8_times, fp16_times = layer_times(int8_profile), layer_times(fp16_profile)
    int8_reformats, fp16_reformats = reformats_into(int8_times), reformats_into(fp16_times)
    int8_holding, fp16_holding = layers_by_node(int8_times), layers_by_node(fp16_times)
    int8_compute = {str(row.get("name", "")) for row in int8_layers
                    if row.get("precision") == "int8"
                    and any(n in quantised for n in layer_nodes(str(row.get("name", ""))))}
    costs, covered = [], set()
    for row in int8_layers:
        name = str(row.get("name", ""))
        if name not in int8_compute or name not in int8_times or name in covered:
            continue
        int8_side, fp16_side = matched_layers(name, int8_holding, fp16_holding)
        covered |= int8_side
        nodes = [n for layer in sorted(int8_side & int8_compute) for n in layer_nodes(layer)
                 if n in quantised]
        if not fp16_side or any(n not in fp16_holding for n in nodes):
            continue
        costs.append(RegionCost(
            layer=name, nodes=nodes,
            int8_ms=sum(int8_times[l] + int8_reformats.get(l, 0.0) for l in int8_side),
            fp16_ms=sum(fp16_times[f] + fp16_reformats.get(f, 0.0) for f in fp16_side),
            fp16_layers=sorted(fp16_side), int8_layers=sorted(int8_side)))
    return costs


def nodes_to_keep_for_speed(costs: Sequence[RegionCost], already: Iterable[str] = (),
                            limit: int = 0) -> List[str]:
    """The compute nodes of the regions that lose to fp16, the largest loss first (at most
    `limit` regions where limit > 0), leaving out nodes already kept."""
    kept = set(already)
    losing = sorted((c for c in costs if c.loses), key=lambda c: c.fp16_ms - c.int8_ms)
    if limit > 0:
        losing = losing[:limit]
    nodes: List[str] = []
    for cost in losing:
        nodes += [n for n in cost.nodes if n not in kept and n not in nodes]
    return nodes


def better_round(candidate_ms: float, best_ms: float, margin: float) -> bool:
    """A placement round is kept only if its engine is faster than the best so far by more than
    the timing noise `margin` (a fraction): otherwise the earlier engine stays."""
    return candidate_ms < best_ms * (1.0 - margin)


def why_no_rounds(int8_ms: float, fp16_ms: float, margin: float, when: str) -> Optional[str]:
    """Why the placement rounds are skipped, or None to run them. With `when: slower` (the default)
    they run only for an int8 engine that is not faster than the fp16 engine by `margin`: on the
    H200, every round tried on an engine already faster overall was slower (ResNet-50, MobileNetV2,
    efficientnet_v2_s: the float regions' reformats cost more than their int8 loss) and cost a
    rebuild (efficientnet_v2_s: 153 s; benchmarks/gpu/int8-vs-fp16.md)."""
    if when == "always" or not int8_ms or not fp16_ms:
        return None
    if int8_ms < fp16_ms * (1.0 - margin):
        return (f"int8 {int8_ms:.4g} ms is already {fp16_ms / int8_ms:.2f}x its fp16 engine "
                f"({fp16_ms:.4g} ms): no rebuild (tensorrt.int8_speed.when: always runs the rounds)")
    return None
