"""trtflow.patch: graphsurgeon passes (int64 inputs, folding, shapes) on real exported graphs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import onnx
import pytest

from trtflow.errors import TrtflowError
from trtflow.io import read_json
from trtflow.patch import PASSES, PatchContext, apply_passes, patch_onnx
from unit_helpers import exported, image_batch, ort_run, resnet_spec, token_batch, token_spec

ALL_PASSES = ["fold_constants", "cleanup", "toposort", "int64_inputs_to_int32", "infer_shapes"]


@pytest.fixture(scope="module")
def token_onnx(tmp_path_factory) -> Path:
    return exported(tmp_path_factory.mktemp("patch_tokens"), "tokens", token_spec())[1]


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory) -> Path:
    return exported(tmp_path_factory.mktemp("patch_resnet"), "resnet", resnet_spec(size=32))[1]


def patch(source: Path, directory: Path, backend: str, policy: str = "auto",
          passes: List[str] = ALL_PASSES, model: str = "m") -> Dict[str, Any]:
    return patch_onnx(model, source, directory / "patched.onnx", directory / "patch.json", backend,
                      {"passes": passes, "int64_inputs_to_int32": policy})


def input_types(path: Path) -> Dict[str, int]:
    return {i.name: i.type.tensor_type.elem_type for i in onnx.load(str(path)).graph.input}


def test_int64_input_becomes_int32_for_tensorrt(token_onnx: Path, tmp_path: Path) -> None:
    report = patch(token_onnx, tmp_path, "tensorrt")
    patched = tmp_path / "patched.onnx"
    assert input_types(patched) == {"tokens": onnx.TensorProto.INT32}
    pass_report = next(p for p in report["passes"] if p["pass"] == "int64_inputs_to_int32")
    assert pass_report == {"pass": "int64_inputs_to_int32", "converted": ["tokens"]}
    proto = onnx.load(str(patched))
    casts = [n for n in proto.graph.node if n.op_type == "Cast" and n.input[0] == "tokens"]
    assert len(casts) == 1
    assert onnx.helper.get_attribute_value(casts[0].attribute[0]) == onnx.TensorProto.INT64
    assert report["nodes_after"] == report["nodes_before"] + 1
    # the cast is the only consumer of the graph input; everything else reads the int64 copy
    assert [n.op_type for n in proto.graph.node if "tokens" in n.input] == ["Cast"]


def test_int32_patched_token_model_gives_identical_outputs(token_onnx: Path, tmp_path: Path) -> None:
    patch(token_onnx, tmp_path, "tensorrt")
    feed = token_batch(5, seed=2)
    (original,) = ort_run(token_onnx, feed)
    (patched,) = ort_run(tmp_path / "patched.onnx", {"tokens": feed["tokens"].astype(np.int32)})
    np.testing.assert_array_equal(patched, original)


def test_int64_input_is_kept_for_onnxruntime_with_policy_auto(token_onnx: Path,
                                                              tmp_path: Path) -> None:
    report = patch(token_onnx, tmp_path, "onnxruntime")
    assert input_types(tmp_path / "patched.onnx") == {"tokens": onnx.TensorProto.INT64}
    pass_report = next(p for p in report["passes"] if p["pass"] == "int64_inputs_to_int32")
    assert pass_report["converted"] == []
    assert pass_report["skipped"] == "policy 'auto' for backend 'onnxruntime'"
    feed = token_batch(3)
    np.testing.assert_array_equal(ort_run(tmp_path / "patched.onnx", feed)[0],
                                  ort_run(token_onnx, feed)[0])


@pytest.mark.parametrize("backend, policy, expected", [
    ("onnxruntime", "always", onnx.TensorProto.INT32),
    ("tensorrt", "never", onnx.TensorProto.INT64),
    ("tensorrt", "always", onnx.TensorProto.INT32),
])
def test_int64_policy_overrides_the_backend_default(token_onnx: Path, tmp_path: Path, backend: str,
                                                    policy: str, expected: int) -> None:
    patch(token_onnx, tmp_path, backend, policy, ["int64_inputs_to_int32"])
    assert input_types(tmp_path / "patched.onnx") == {"tokens": expected}


def test_float_inputs_are_not_touched_by_the_int64_pass(resnet_onnx: Path, tmp_path: Path) -> None:
    report = patch(resnet_onnx, tmp_path, "tensorrt", passes=["int64_inputs_to_int32"])
    assert report["passes"][0]["converted"] == []
    assert input_types(tmp_path / "patched.onnx") == {"input": onnx.TensorProto.FLOAT}


def test_fold_constants_shrinks_resnet_and_keeps_its_outputs(resnet_onnx: Path,
                                                             tmp_path: Path) -> None:
    report = patch(resnet_onnx, tmp_path, "onnxruntime")
    assert report["nodes_before"] == len(onnx.load(str(resnet_onnx)).graph.node)
    assert report["nodes_after"] < report["nodes_before"]
    folded = report["passes"][0]
    assert folded["pass"] == "fold_constants"
    assert folded["after"]["nodes"] < folded["before"]["nodes"]
    feed = image_batch(3)
    np.testing.assert_allclose(ort_run(tmp_path / "patched.onnx", feed)[0],
                               ort_run(resnet_onnx, feed)[0], atol=1e-5, rtol=1e-5)


def test_infer_shapes_adds_value_info(resnet_onnx: Path, tmp_path: Path) -> None:
    report = patch(resnet_onnx, tmp_path, "onnxruntime", passes=["infer_shapes"])
    shapes = report["passes"][0]
    assert shapes["value_info_after"] > shapes["value_info_before"]
    proto = onnx.load(str(tmp_path / "patched.onnx"))
    assert len(proto.graph.value_info) == shapes["value_info_after"]


def test_patch_report_lists_every_pass_in_order(token_onnx: Path, tmp_path: Path) -> None:
    report = patch(token_onnx, tmp_path, "tensorrt", model="tok")
    assert read_json(tmp_path / "patch.json") == report
    assert [p["pass"] for p in report["passes"]] == ALL_PASSES
    assert report["model"] == "tok" and report["backend"] == "tensorrt"
    assert set(report["passes"][2]) == {"pass", "reordered"}
    onnx.checker.check_model(onnx.load(str(tmp_path / "patched.onnx")))


def test_unknown_pass_is_refused_with_the_known_names(token_onnx: Path) -> None:
    ctx = PatchContext(model="tok", backend="tensorrt", options={})
    with pytest.raises(TrtflowError) as info:
        apply_passes(onnx.load(str(token_onnx)), ["cleanup", "fold_everything"], ctx)
    assert "model 'tok': unknown patch pass 'fold_everything'" in str(info.value)
    assert str(sorted(PASSES)) in info.value.fix


def test_no_passes_gives_an_equivalent_graph(token_onnx: Path, tmp_path: Path) -> None:
    report = patch(token_onnx, tmp_path, "tensorrt", passes=[])
    assert report["passes"] == [] and report["nodes_after"] == report["nodes_before"]
    feed = token_batch(2)
    np.testing.assert_array_equal(ort_run(tmp_path / "patched.onnx", feed)[0],
                                  ort_run(token_onnx, feed)[0])


@pytest.fixture(scope="module")
def layernorm_model(tmp_path_factory) -> Path:
    """A small transformer-style block exported at opset 17, which has LayerNormalization."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(16)
            self.proj = torch.nn.Linear(16, 8)

        def forward(self, x):
            return self.proj(self.norm(x))

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ln") / "ln.onnx"
    torch.onnx.export(Block().eval(), (torch.randn(2, 5, 16),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
                      opset_version=17, dynamo=False)
    return path


@pytest.mark.parametrize("backend,version,policy,expect", [
    ("tensorrt", "8.5.3", "auto", 1), ("tensorrt", "8.6.0", "auto", 0),
    ("onnxruntime", "", "auto", 0), ("onnxruntime", "", "always", 1), ("tensorrt", "8.5.3", "never", 0)])
def test_decompose_layernorm_policy_and_equivalence(layernorm_model: Path, tmp_path: Path,
                                                    backend: str, version: str, policy: str,
                                                    expect: int) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from trtflow.patch import PatchContext, apply_passes

    patched, reports = apply_passes(onnx.load(str(layernorm_model)), ["decompose_layernorm", "infer_shapes"],
                                    PatchContext("ln", backend, {"decompose_layernorm": policy}, version))
    assert reports[0]["decomposed"] == expect
    ops = [n.op_type for n in patched.graph.node]
    assert ("LayerNormalization" in ops) == (expect == 0)
    onnx.checker.check_model(patched)
    x = np.random.default_rng(1).standard_normal((3, 5, 16)).astype(np.float32)
    before = ort.InferenceSession(str(layernorm_model)).run(None, {"x": x})[0]
    after = ort.InferenceSession(patched.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(before - after).max() < 1e-5
