"""What a TensorRT engine runs in: the engine inspector's layers, each classified by the lowest
precision it computes in, and the check that an fp16/int8 engine has layers in that precision.

Pure Python beside the `trt` module handed in: it runs in the Python that has TensorRT.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from ..errors import TrtflowError

log = logging.getLogger(__name__)

# Layer-precision names, in the order a layer is classified by (lowest precision it touches).
PRECISION_TOKENS: List[Tuple[str, Tuple[str, ...]]] = [
    ("int8", ("int8",)), ("fp8", ("fp8",)), ("fp16", ("fp16", "half")),
    ("bf16", ("bfloat16", "bf16")), ("fp32", ("fp32", "float")), ("int32", ("int32",)),
    ("int64", ("int64",)), ("bool", ("bool",)), ("uint8", ("uint8",)),
]
# Substrings of kernel (tactic) names, lowest precision first; only used when datatypes are N/A.
TACTIC_TOKENS: List[Tuple[str, Tuple[str, ...]]] = [
    ("int8", ("int8", "i8i8", "imma")), ("fp16", ("fp16", "f16f16", "hmma", "h1688", "h16816")),
    ("fp32", ("fp32", "f32f32", "sgemm")),
]
# An engine built for this precision must have at least one layer in it.
EXPECTED_LAYER_PRECISION = {"fp16": "fp16", "int8": "int8"}


def _datatypes(entry: Mapping[str, Any]) -> str:
    text = " ".join(str(v) for k, v in entry.items() if k.lower() in ("format/datatype", "datatype"))
    return text.lower()


def classify_layer(layer: Mapping[str, Any]) -> str:
    """The lowest precision a layer computes in, from its tensors' and weights' datatypes."""
    texts = [_datatypes(t) for t in list(layer.get("Inputs", [])) + list(layer.get("Outputs", []))]
    weights = layer.get("Weights")
    if isinstance(weights, Mapping):
        texts.append(str(weights.get("Type", "")).lower())
    joined = " ".join(texts)
    for name, tokens in PRECISION_TOKENS:
        if any(re.search(rf"\b{re.escape(t)}\b", joined) for t in tokens):
            return name
    # With dynamic shapes TensorRT 8.6 may print "N/A due to dynamic shapes" for the tensors; the
    # tactic name still says what the kernel computes in (e.g. "..._FP32FP32NHWC_...").
    tactic = str(layer.get("TacticName", "")).lower()
    for name, tokens in TACTIC_TOKENS:
        if any(t in tactic for t in tokens):
            return name
    return "unknown"


def layer_table(engine_info: Mapping[str, Any]) -> List[Dict[str, str]]:
    """name, type and precision of every layer (NoOps left out)."""
    rows = []
    for layer in engine_info.get("Layers", []):
        if isinstance(layer, str):  # names only: the engine was built without DETAILED verbosity
            rows.append({"name": layer, "type": "", "precision": "unknown"})
        elif layer.get("LayerType") != "NoOp" and layer.get("ParameterType") != "NoOp":
            row = {"name": str(layer.get("Name", "")), "type": str(layer.get("LayerType", "")),
                   "precision": classify_layer(layer)}
            if row["precision"] == "unknown":  # keep what TensorRT said, to improve the classifier
                row["inspector"] = json.dumps(layer)[:800]
            rows.append(row)
    return rows


def layer_precisions(rows: List[Mapping[str, str]]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for row in rows:
        counts[row["precision"]] = counts.get(row["precision"], 0) + 1
    return counts


def check_layer_precisions(precision: str, counts: Mapping[str, int], model: str,
                           onnx_path: Path) -> str:
    """An fp16/int8 engine with no layer in that precision is a failed build. Opaque layers
    (TensorRT's Myelin "ForeignNode" reports no datatypes) make the check unverifiable: said so,
    not passed silently."""
    wanted = EXPECTED_LAYER_PRECISION.get(precision)
    if not wanted or counts.get(wanted):
        return "ok"
    if counts.get("unknown"):
        log.warning("%s %s engine: no layer reports %s, %d layer(s) report no datatype (Myelin): "
                    "precision not verifiable from the inspector", model, precision, wanted,
                    counts["unknown"])
        return f"unverifiable: {counts['unknown']} layer(s) report no datatype"
    raise TrtflowError(f"the {precision} engine has no {precision} layer (layer precisions: "
                       f"{dict(counts)})", model=model, path=str(onnx_path),
                       fix="check the precision stage's report: the graph should carry "
                           f"{precision} casts or Q/DQ nodes")


def inspect_engine(trt, engine, shapes: Mapping[str, List[Tuple[int, ...]]]) -> Dict[str, Any]:
    """The engine inspector's JSON, with input shapes set so formats are resolved."""
    context = engine.create_execution_context()
    for name, (_, opt, _) in shapes.items():
        context.set_input_shape(name, opt)
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    # strict=False: "Metadata" holds raw \x1e/\x1f separators between ONNX layer names
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON), strict=False)
