"""Per-layer profiles: where an engine's time goes, grouped into what a user can act on.

A backend's runner reports each layer's (TensorRT: fused layer's; ONNX Runtime: node's) time per
inference run (`Runner.profile_layers`); this module turns those into the benchmark JSON's
`layer_profile`, the summary's profile columns, and the comparison that explains why a lower
precision is not faster. Standard library only: it runs in the TensorRT Python too.
"""
from __future__ import annotations

import re
import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence

CONVOLUTION = "convolution/GEMM"
REFORMAT = "reformat/copy"
# Categories in the order a layer is tested against them: the first whose pattern matches the
# layer's type or name wins. Myelin before convolution: a Myelin region ("{ForeignNode[...]}")
# names the convolutions and MatMuls inside it, but its time is Myelin's, not a conv kernel's.
CATEGORY_PATTERNS: List[tuple] = [
    (REFORMAT, r"^reformat|reformatting copynode|^copy$|^shuffle$|^transpose$|^reorder(input|output)$"
               r"|^(quantize|dequantize)linear$|^cast$|^concatenation$|^memcpy"),
    ("NMS", r"nms|nonmaxsuppression"),
    ("TopK", r"topk"),
    ("RoIAlign/GridSample", r"roialign|roi_align|gridsample|grid_sample|pyramidroi|roipool"),
    ("Myelin", r"^myelin$|foreignnode"),
    (CONVOLUTION, r"conv|gemm|matmul|matrixmultiply|fullyconnected|deconvolution"),
]
CATEGORIES = [name for name, _ in CATEGORY_PATTERNS] + ["other"]
TOP_LAYERS = 10
# layer types that say nothing of what the layer does: its name does
PLUGIN_TYPES = {"", "pluginv2", "pluginv3", "plugin", "unknown"}


def categorize(layer_type: str, name: str = "") -> str:
    """The category of one layer: by its type (TensorRT's LayerType, ONNX Runtime's op type)
    where it has one, by its name otherwise and for plugins (TensorRT names reformats, Myelin
    regions and plugin layers after what they do). A typed layer is not re-read by name: a
    pointwise layer named "PWN(/layer1/conv/Relu)" is no convolution."""
    layer_type = layer_type.strip().lower()
    text = name.strip().lower() if layer_type in PLUGIN_TYPES else layer_type
    for category, pattern in CATEGORY_PATTERNS:
        if re.search(pattern, text):
            return category
    return "other"


def is_reformat(layer_type: str, name: str) -> bool:
    """A layer TensorRT or ONNX Runtime inserts only to change a tensor's format or precision."""
    text = f"{layer_type} {name}".lower()
    return bool(re.search(r"reformat|reorder(input|output)", text))


def summarize_profile(layer_runs: Mapping[str, Mapping[str, Any]], batch: int,
                      runs: int) -> Dict[str, Any]:
    """The benchmark JSON's `layer_profile` from each layer's per-run times.

    `layer_runs`: layer name -> {"times_ms": [one per run], "type": ..., "precision": ...}.
    A layer's time is the median over the runs; shares are of the layers' total, which is
    larger than the timed latency by the profiler's per-layer synchronisation."""
    layers = []
    for name, entry in layer_runs.items():
        times = [float(t) for t in entry.get("times_ms") or ()]
        if not times:
            continue
        layer_type = str(entry.get("type", ""))
        layers.append({"name": name, "type": layer_type, "precision": entry.get("precision", ""),
                       "category": categorize(layer_type, name),
                       "reformat": is_reformat(layer_type, name),
                       "ms": statistics.median(times)})
    total = sum(layer["ms"] for layer in layers)
    categories = {c: {"ms": 0.0, "share": 0.0, "layers": 0} for c in CATEGORIES}
    for layer in layers:
        layer["share"] = layer["ms"] / total if total else 0.0
        group = categories[layer["category"]]
        group["ms"] += layer["ms"]
        group["layers"] += 1
    for group in categories.values():
        group["share"] = group["ms"] / total if total else 0.0
    ranked = sorted(layers, key=lambda layer: -layer["ms"])
    return {"batch": int(batch), "runs": int(runs), "total_ms": total, "layers_timed": len(layers),
            "categories": categories,
            "share_outside_conv": 1.0 - categories[CONVOLUTION]["share"] if total else 0.0,
            "reformat_layers": sum(layer["reformat"] for layer in layers),
            "reformat_ms": sum(layer["ms"] for layer in layers if layer["reformat"]),
            "top_layers": ranked[:TOP_LAYERS], "layers": ranked}


def profile_columns(profile: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The summary's columns of a cell's layer profile (empty where none was taken)."""
    if not profile or not profile.get("total_ms"):
        return {"profile_share_outside_conv": "", "profile_reformat_layers": "",
                "profile_top_category": "", "profile_top_layer": ""}
    categories = profile["categories"]
    top_category = max(categories, key=lambda c: categories[c]["ms"])
    top = profile["top_layers"][0]
    return {"profile_share_outside_conv": round(profile["share_outside_conv"], 4),
            "profile_reformat_layers": profile["reformat_layers"],
            "profile_top_category": f"{top_category} {categories[top_category]['share']:.0%}",
            "profile_top_layer": f"{_short(top['name'])} ({top['category']}, "
                                 f"{top['share']:.0%})"}


def _short(name: str, limit: int = 80) -> str:
    return name if len(name) <= limit else name[:limit - 3] + "..."


def explain_slower(slow: Optional[Mapping[str, Any]], fast: Optional[Mapping[str, Any]],
                   slow_label: str, fast_label: str) -> str:
    """Why the `slow` cell's engine takes longer than the `fast` one's, from their profiles: the
    categories that grew most, the reformat layers of each and the slow engine's top layers."""
    if not slow or not fast or not slow.get("total_ms") or not fast.get("total_ms"):
        return "no layer profile to compare"
    growth = sorted(((slow["categories"][c]["ms"] - fast["categories"][c]["ms"], c)
                     for c in CATEGORIES), reverse=True)
    grew = [f"{c} +{delta:.3g} ms" for delta, c in growth if delta > 0][:3]
    tops = ", ".join(f"{_short(layer['name'], 60)} {layer['ms']:.3g} ms ({layer['precision'] or '?'})"
                     for layer in slow["top_layers"][:3])
    return (f"layer time {slow['total_ms']:.3g} ms ({slow_label}) vs {fast['total_ms']:.3g} ms "
            f"({fast_label}); more time in: {', '.join(grew) or 'no category'}; reformat layers "
            f"{slow['reformat_layers']} ({slow['reformat_ms']:.3g} ms) vs {fast['reformat_layers']} "
            f"({fast['reformat_ms']:.3g} ms); {slow_label}'s top layers: {tops}")


def top_categories(profiles: Sequence[Mapping[str, Any]]) -> List[str]:
    """Categories that take any time in any of `profiles`, largest first (for the plot)."""
    totals = {c: sum(p["categories"][c]["ms"] for p in profiles) for c in CATEGORIES}
    return [c for c in sorted(totals, key=lambda c: -totals[c]) if totals[c] > 0]
