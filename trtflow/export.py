"""Export stage: the trained PyTorch model to ONNX with named I/O and a dynamic batch axis (or
the model's static_batch)."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

from . import detection
from .errors import TrtflowError
from .io import atomic_path, write_json

log = logging.getLogger(__name__)
BATCH_AXIS_NAME = "batch"
EXPORT_BATCH = 2  # a batch of 1 lets the tracer specialise the batch axis away


def dummy_inputs(model: str, specs: Sequence[Mapping[str, Any]], batch: int = EXPORT_BATCH,
                 own_data: bool = False):
    """Inputs to trace with: seeded random ones, or (own_data) the inputs' own sample data."""
    import torch

    from .data import input_set

    specs_used = specs if own_data else [dict(s, data="synthetic") for s in specs]
    arrays, _ = input_set(model, specs_used, batch, "validation")
    return tuple(torch.from_numpy(arrays[s["name"]]) for s in specs)


def check_adapted_batch(model: str, static_batch: Any) -> None:
    if static_batch != 1:
        raise TrtflowError(
            f"a torchvision detector runs one image per call (trtflow.detection), but "
            f"static_batch is {static_batch}", model=model,
            fix=f"set models.{model}.static_batch: 1 and run it in batch profiles of "
                "{min: 1, opt: 1, max: 1}")


def describe_structure(value: Any, depth: int = 0) -> str:
    """A short description of a (nested) model output: 'a list of 2 dicts {boxes: tensor...}'."""
    import torch

    if isinstance(value, torch.Tensor):
        return f"tensor {str(value.dtype).replace('torch.', '')} {list(value.shape)}"
    if depth > 2:
        return type(value).__name__
    if isinstance(value, Mapping):
        keys = ", ".join(f"{k}: {describe_structure(v, depth + 1)}" for k, v in list(value.items())[:6])
        return f"a dict {{{keys}}}"
    if isinstance(value, (list, tuple)):
        kinds = {type(v).__name__ for v in value}
        inner = describe_structure(value[0], depth + 1) if value else "nothing"
        return f"a {type(value).__name__} of {len(value)} ({'/'.join(sorted(kinds))}; the first: {inner})"
    return type(value).__name__


def check_forward(module, inputs, model: str, specs: Sequence[Mapping[str, Any]],
                  outputs: Sequence[str]) -> None:
    """Run the model once on the configured input dtypes/shapes, so that an input the model cannot
    take fails here with a message naming the input, not deep inside the exporter."""
    import torch

    described = ", ".join(f"{s['name']}: {s['dtype']} [N, {', '.join(map(str, s['shape']))}]"
                          for s in specs)
    try:
        with torch.no_grad():
            result = module(*inputs)
    except Exception as exc:  # any failure of user model code on these inputs
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
        if batch > 1 and _takes_one_sample(module, inputs):
            raise TrtflowError(
                f"the model takes one sample per call, not a batch of {batch} ({reason})",
                model=model, fix=one_sample_fix(model)) from exc
        raise TrtflowError(
            f"the model cannot take its configured inputs ({described}): {reason}", model=model,
            fix=f"set models.{model}.inputs (dtype, shape without the batch axis) to what the "
                "model's forward() expects") from exc
    odd = [(index, value) for index, value in enumerate(result) if not isinstance(value, torch.Tensor)]
    if odd:
        index, value = odd[0]
        raise TrtflowError(
            f"the model returns {describe_structure(result)}: output {index} is "
            f"{describe_structure(value)}, but every output must be a tensor", model=model,
            fix="wrap the model so that forward() returns a tensor or a tuple of tensors, one per "
                "name in 'outputs' (detections: one image per call, padded to a fixed count)")
    if len(result) != len(outputs):
        raise TrtflowError(
            f"the model returns {len(result)} output(s) but the config names {len(outputs)}: "
            f"{list(outputs)}", model=model, fix="list one name per model output in 'outputs'")


def _takes_one_sample(module, inputs) -> bool:
    """Whether the model runs on the first sample alone (where it failed on the batch)."""
    import torch

    try:
        with torch.no_grad():
            module(*(value[:1] for value in inputs))
    except Exception:
        return False
    return True


def one_sample_fix(model: str) -> str:
    """What makes a model that takes one sample per call run: a static batch of 1 and a profile
    of exactly that batch (config.check_model_profiles asks the same)."""
    return (f"set models.{model}.static_batch: 1, add a batch profile of one sample "
            f"(batch_profiles: {{one: {{min: 1, opt: 1, max: 1}}}}) and run the model only in it "
            f"(models.{model}.batch_profiles: [one])")


def export_onnx(model: str, spec: Mapping[str, Any], weights_path: str, output: Path,
                report_path: Path, opset: int, exporter: str = "torchscript") -> Dict[str, Any]:
    import onnx
    import torch

    from .models import eval_wrapper, load_trained_model

    trained = load_trained_model(model, spec, weights_path)
    module = eval_wrapper(trained)
    specs = spec["inputs"]
    static_batch = spec.get("static_batch")
    adapted = detection.is_adapted(trained)
    if adapted:
        check_adapted_batch(model, static_batch)
    # a detector is traced on its sample images: on noise it may find nothing, and the trace
    # would keep only the no-detection path (no NMS at all)
    inputs = dummy_inputs(model, specs, static_batch or EXPORT_BATCH, own_data=adapted)
    check_forward(module, inputs, model, specs, spec["outputs"])
    if adapted:
        detection.check_trace_finds_detections(module, inputs, model)
    input_names = [s["name"] for s in specs]
    output_names = list(spec["outputs"])
    log.info("export: %s with the %s exporter at opset %d, %s batch", model, exporter, opset,
             f"static {static_batch}" if static_batch else "dynamic")
    with atomic_path(output) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        if exporter == "dynamo":
            batch = torch.export.Dim(BATCH_AXIS_NAME, min=1, max=4096)
            # forward(*inputs) is one variadic argument: one tuple of specs
            dynamic = None if static_batch else (tuple({0: batch} for _ in inputs),)
            torch.onnx.export(module, inputs, str(tmp), input_names=input_names,
                              output_names=output_names, opset_version=opset, dynamo=True,
                              dynamic_shapes=dynamic, external_data=False)
        else:
            axes = None if static_batch else {name: {0: BATCH_AXIS_NAME}
                                              for name in input_names + output_names}
            torch.onnx.export(module, inputs, str(tmp), input_names=input_names,
                              output_names=output_names, opset_version=opset,
                              dynamic_axes=axes, do_constant_folding=True, dynamo=False)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
    report = {
        "model": model, "exporter": exporter, "opset": opset, "torch": torch.__version__,
        "onnx": onnx.__version__, "nodes": len(proto.graph.node), "static_batch": static_batch,
        "inputs": [_describe(v) for v in proto.graph.input],
        "outputs": [_describe(v) for v in proto.graph.output],
    }
    if adapted:
        report["detection_adapter"] = list(trained.adapter_rewrites)
    write_json(report_path, report)
    return report


def _describe(value) -> Dict[str, Any]:
    import onnx

    tensor = value.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
            "shape": dims}
