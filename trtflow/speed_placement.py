"""Latency-aware int8 placement: which int8 regions of a TensorRT engine lose to fp16, from the
per-layer profiles of the int8 engine and of the same model's fp16 engine (issue 21).

TensorRT fuses a Q/DQ'd convolution (or MatMul) with what surrounds it into one engine layer
whose name joins the ONNX node names ("/layer1/conv1/Conv + /layer1/relu/Relu"), and it inserts
reformat layers ("Reformatting CopyNode for Input Tensor 0 to <layer>") where int8 and fp16
regions meet. A region here is one int8 engine layer holding quantised compute nodes, with the
reformats that feed it; its fp16 counterpart is every fp16 engine layer holding those nodes, with
their reformats. Where the int8 region takes longer, its nodes are kept out of int8 for speed.

Standard library only: it runs in the TensorRT Python (trtflow.runners.tensorrt_speed applies
the decision to the network) and is tested on the CPU with profiles given as data.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Set

REFORMAT_TARGET = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (.+)$")


@dataclass(frozen=True)
class RegionCost:
    """One int8 region's time against its fp16 counterpart (ms, medians of the profile runs)."""

    layer: str               # the int8 engine layer
    nodes: List[str]         # its quantised compute nodes (ONNX node names)
    int8_ms: float           # the layer and the reformats into it
    fp16_ms: float           # the fp16 layers holding the same nodes, and their reformats
    fp16_layers: List[str]

    @property
    def loses(self) -> bool:
        return self.int8_ms > self.fp16_ms

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "loses": self.loses}


def layer_nodes(layer_name: str) -> List[str]:
    """The ONNX node names a fused engine layer is named after. TensorRT joins them with ' + ';
    a Myelin region ("{ForeignNode[first...last]}") names only its ends and is not split."""
    if layer_name.startswith("{ForeignNode"):
        return []
    return [part.strip() for part in layer_name.split(" + ") if part.strip()]


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


def region_costs(int8_profile: Mapping[str, Any], fp16_profile: Mapping[str, Any],
                 int8_layers: Sequence[Mapping[str, Any]],
                 compute_nodes: Iterable[str]) -> List[RegionCost]:
    """Every int8 region's cost against fp16.

    `int8_layers`: the int8 engine's inspector table (name, type, precision); `compute_nodes`:
    the ONNX names of the graph's quantised compute nodes (the convolutions and MatMuls whose
    inputs pass through Q/DQ). A region whose nodes the fp16 profile does not show is skipped:
    it cannot be compared."""
    quantised: Set[str] = set(compute_nodes)
    int8_times, fp16_times = layer_times(int8_profile), layer_times(fp16_profile)
    int8_reformats, fp16_reformats = reformats_into(int8_times), reformats_into(fp16_times)
    fp16_by_node: Dict[str, str] = {}
    for name in fp16_times:
        for node in layer_nodes(name):
            fp16_by_node.setdefault(node, name)
    costs = []
    for layer in int8_layers:
        name = str(layer.get("name", ""))
        nodes = [n for n in layer_nodes(name) if n in quantised]
        if layer.get("precision") != "int8" or not nodes or name not in int8_times:
            continue
        fp16_layers = sorted({fp16_by_node[n] for n in nodes if n in fp16_by_node})
        if len(fp16_layers) == 0 or any(n not in fp16_by_node for n in nodes):
            continue
        costs.append(RegionCost(
            layer=name, nodes=nodes,
            int8_ms=int8_times[name] + int8_reformats.get(name, 0.0),
            fp16_ms=sum(fp16_times[f] + fp16_reformats.get(f, 0.0) for f in fp16_layers),
            fp16_layers=fp16_layers))
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
