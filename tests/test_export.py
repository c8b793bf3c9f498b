"""trtflow.export: PyTorch to ONNX with named I/O and a dynamic batch axis, checked with ORT."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import onnx
import pytest
import torch

from trtflow.errors import TrtflowError
from trtflow.export import EXPORT_BATCH, check_forward, dummy_inputs, export_onnx
from trtflow.io import read_json
from unit_helpers import (exported, image_batch, ort_run, reference_module, resnet_spec,
                          token_batch, token_spec, torch_outputs)

Exported = Tuple[Dict[str, Any], Path, Path]  # spec, weights, onnx


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory) -> Exported:
    spec = resnet_spec(size=32)
    weights, onnx_path = exported(tmp_path_factory.mktemp("export_resnet"), "resnet", spec)
    return spec, weights, onnx_path


@pytest.fixture(scope="module")
def token_export(tmp_path_factory) -> Exported:
    spec = token_spec()
    weights, onnx_path = exported(tmp_path_factory.mktemp("export_tokens"), "tokens", spec, opset=13)
    return spec, weights, onnx_path


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_resnet_onnx_matches_torch_at_any_batch(resnet_export: Exported, batch: int) -> None:
    spec, weights, onnx_path = resnet_export
    feed = image_batch(batch, seed=batch)
    (out,) = ort_run(onnx_path, feed)
    (ref,) = torch_outputs(reference_module("resnet", spec, weights), feed)
    assert out.shape == (batch, 1000)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_resnet_export_report_describes_named_dynamic_io(resnet_export: Exported) -> None:
    _, _, onnx_path = resnet_export
    report = read_json(onnx_path.with_name("resnet.export.json"))
    proto = onnx.load(str(onnx_path))
    assert report["model"] == "resnet" and report["exporter"] == "torchscript"
    assert report["opset"] == 17 and report["torch"] == torch.__version__
    assert report["nodes"] == len(proto.graph.node) > 0
    assert report["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert report["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 1000]}]


def test_exported_graph_has_the_requested_opset_and_passes_the_checker(
        resnet_export: Exported, token_export: Exported) -> None:
    for (_, _, path), opset in ((resnet_export, 17), (token_export, 13)):
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        default_domain = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
        assert default_domain == [opset]


def test_token_model_exports_with_int64_input_and_matches_torch(token_export: Exported) -> None:
    spec, weights, onnx_path = token_export
    proto = onnx.load(str(onnx_path))
    assert proto.graph.input[0].name == "tokens"
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    feed = token_batch(4)
    (out,) = ort_run(onnx_path, feed)
    (ref,) = torch_outputs(reference_module("tokens", spec, weights), feed)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_export_leaves_no_temporary_files(resnet_export: Exported) -> None:
    directory = resnet_export[2].parent
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".")]


def test_dummy_inputs_use_the_export_batch_and_configured_dtypes() -> None:
    spec = token_spec()
    (tokens,) = dummy_inputs("tokens", spec["inputs"])
    assert tokens.shape == (EXPORT_BATCH, 16) and tokens.dtype == torch.int64
    assert EXPORT_BATCH > 1  # batch 1 lets the tracer drop the batch axis
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 100
    image_spec = [{"name": "input", "shape": [3, 8, 8], "dtype": "float32",
                   "data": "imagenet_samples"}]
    (image,) = dummy_inputs("net", image_spec, batch=3)  # synthetic even for photo inputs
    assert image.shape == (3, 3, 8, 8) and image.dtype == torch.float32


def test_check_forward_names_the_inputs_the_model_cannot_take(resnet_export: Exported) -> None:
    spec, weights, _ = resnet_export
    module = reference_module("resnet", spec, weights)
    bad = [dict(spec["inputs"][0], dtype="int64")]
    with pytest.raises(TrtflowError) as info:
        check_forward(module, dummy_inputs("resnet", bad), "resnet", bad, ["logits"])
    text = str(info.value)
    assert text.startswith("model 'resnet': the model cannot take its configured inputs "
                           "(input: int64 [N, 3, 32, 32])")
    assert "RuntimeError" in text
    assert "models.resnet.inputs" in info.value.fix
    assert "static_batch" not in info.value.fix  # it fails on one sample too


def test_a_model_that_takes_one_sample_per_call_is_told_to_use_static_batch_1() -> None:
    """Issue 24 case 13: the fix pointed at `inputs`, not at the static batch that works."""
    from trtflow.models import eval_wrapper
    from user_models.faulty import one_sample_at_a_time

    specs = [{"name": "images", "shape": [3, 8, 8], "dtype": "float32"}]
    module = eval_wrapper(one_sample_at_a_time())
    with pytest.raises(TrtflowError) as info:
        check_forward(module, dummy_inputs("one", specs), "one", specs, ["logits"])
    assert str(info.value).startswith("model 'one': the model takes one sample per call, not a "
                                      "batch of 2 (RuntimeError: shape '[192]' is invalid")
    assert info.value.fix.startswith("set models.one.static_batch: 1, add a batch profile of one "
                                     "sample (batch_profiles: {one: {min: 1, opt: 1, max: 1}})")
    check_forward(module, dummy_inputs("one", specs, batch=1), "one", specs, ["logits"])


def test_check_forward_counts_the_outputs(token_export: Exported) -> None:
    spec, weights, _ = token_export
    module = reference_module("tokens", spec, weights)
    inputs = dummy_inputs("tokens", spec["inputs"])
    check_forward(module, inputs, "tokens", spec["inputs"], ["logits"])  # right count: passes
    with pytest.raises(TrtflowError, match=r"returns 1 output\(s\) but the config names 2: "
                                           r"\['logits', 'features'\]"):
        check_forward(module, inputs, "tokens", spec["inputs"], ["logits", "features"])


def test_failed_export_writes_nothing(tmp_path: Path, token_export: Exported) -> None:
    spec, weights, _ = token_export
    bad = dict(spec, outputs=["logits", "extra"])
    with pytest.raises(TrtflowError):
        export_onnx("tokens", bad, str(weights), tmp_path / "t.onnx", tmp_path / "t.json", 17)
    assert list(tmp_path.iterdir()) == []


def test_dynamo_exporter_exports_a_dynamic_batch(tmp_path: Path, token_export: Exported) -> None:
    spec, weights, _ = token_export
    report = export_onnx("tokens", spec, str(weights), tmp_path / "d.onnx", tmp_path / "d.json",
                         18, exporter="dynamo")
    assert report["exporter"] == "dynamo"
    feed = token_batch(3)
    (out,) = ort_run(tmp_path / "d.onnx", feed)
    (ref,) = torch_outputs(reference_module("tokens", spec, weights), feed)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_an_output_that_is_not_tensors_is_described() -> None:
    """A model returning, say, a list of dicts (a detector that is not torchvision's) is told
    what it returns, not a traceback."""
    import torch

    from trtflow.export import describe_structure

    value = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    assert describe_structure(value).startswith(
        "a list of 2 (dict; the first: a dict {boxes: tensor float32 [0, 4], labels: tensor int64 [0]}")
