"""trtflow.patch: graphsurgeon passes (int64 inputs, folding, shapes) on real exported graphs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

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


# --- detector surgery: If guards and RoiAlign ----------------------------------------------
def _roialign_model(mode: str, sampling_ratio: int = 2):
    from onnx import TensorProto, helper

    node = helper.make_node("RoiAlign", ["X", "rois", "bi"], ["Y"], name="pool", output_height=7,
                            output_width=5, sampling_ratio=sampling_ratio, spatial_scale=0.25,
                            coordinate_transformation_mode=mode)
    graph = helper.make_graph(
        [node], "roialign",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 20, 24]),
         helper.make_tensor_value_info("rois", TensorProto.FLOAT, [None, 4]),
         helper.make_tensor_value_info("bi", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("mode", ["output_half_pixel", "half_pixel"])
def test_roialign_becomes_gridsample_with_the_same_outputs(mode: str) -> None:
    """Boxes inside, across and beyond the feature map edges, tiny and empty: same values as
    ONNX Runtime's RoiAlign, and no RoiAlign left for TensorRT's plugin route."""
    import onnxruntime as ort

    model = _roialign_model(mode)
    patched, reports = apply_passes(model, ["roialign_to_gridsample", "infer_shapes"],
                                    PatchContext("m", "tensorrt", {}, "8.6.0"))
    assert reports[0]["rewritten"] == ["pool"]
    assert "RoiAlign" not in {n.op_type for n in patched.graph.node}
    assert "GridSample" in {n.op_type for n in patched.graph.node}
    rng = np.random.default_rng(0)
    corners = rng.uniform(-10, 100, (60, 2))
    rois = np.concatenate([corners, corners + rng.uniform(0, 40, (60, 2))], 1).astype(np.float32)
    features = rng.standard_normal((1, 3, 20, 24)).astype(np.float32)
    for boxes in (rois, np.zeros((0, 4), np.float32)):
        feed = {"X": features, "rois": boxes, "bi": np.zeros(len(boxes), np.int64)}
        expected = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
        got = ort.InferenceSession(patched.SerializeToString()).run(None, feed)[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_roialign_rewrite_policy_and_what_it_keeps() -> None:
    skipped = apply_passes(_roialign_model("half_pixel"), ["roialign_to_gridsample"],
                           PatchContext("m", "onnxruntime", {}, ""))[1][0]
    assert skipped["skipped"].startswith("policy 'auto'") and skipped["rewritten"] == []
    adaptive = apply_passes(_roialign_model("half_pixel", sampling_ratio=0), ["roialign_to_gridsample"],
                            PatchContext("m", "tensorrt", {}, "8.6.0"))[1][0]
    assert "adaptive sampling_ratio" in adaptive["kept"]["pool"]


def _guarded_model():
    """y = If(n == 0, then: [] (int64), else: x + 1): torchvision's empty-input guard shape."""
    from onnx import TensorProto, helper

    empty = helper.make_tensor("empty", TensorProto.INT64, [0], [])
    then_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["then_out"], value=empty)], "then", [],
        [helper.make_tensor_value_info("then_out", TensorProto.INT64, [0])])
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    else_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["one"], value=one),
         helper.make_node("Add", ["x", "one"], ["else_out"])], "else", [],
        [helper.make_tensor_value_info("else_out", TensorProto.INT64, [None])])
    zero = helper.make_tensor("zero", TensorProto.INT64, [], [0])
    nodes = [helper.make_node("Size", ["x"], ["n"]),
             helper.make_node("Constant", [], ["zero"], value=zero),
             helper.make_node("Equal", ["n", "zero"], ["is_empty"]),
             helper.make_node("If", ["is_empty"], ["y"], name="guard", then_branch=then_branch,
                              else_branch=else_branch)]
    graph = helper.make_graph(nodes, "guarded",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_empty_guard_if_is_replaced_by_its_else_branch() -> None:
    import onnxruntime as ort

    model = _guarded_model()
    patched, reports = apply_passes(model, ["inline_empty_guards"], PatchContext("m", "tensorrt", {}))
    assert reports[0]["inlined"] == ["guard"] and reports[0]["if_nodes_left"] == 0
    assert "If" not in {n.op_type for n in patched.graph.node}
    for x in (np.array([3, 5], np.int64), np.zeros(0, np.int64)):  # the empty case too
        expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        got = ort.InferenceSession(patched.SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_array_equal(got, expected)


# --- one-stage detector post-processing on images where a pyramid level keeps no box ---------

def _clip_boxes_graph() -> onnx.ModelProto:
    """torchvision's clip_boxes_to_image as exported: N x 2 x 2 reshaped to the shape of an
    N x 4 tensor, read with Shape/Gather."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Reshape", ["pairs", "flat_shape"], ["flat"]),  # N x 4, from the pairs
        helper.make_node("Shape", ["flat"], ["shape"]),
        helper.make_node("Gather", ["shape", "i0"], ["n"], axis=0),
        helper.make_node("Gather", ["shape", "i1"], ["four"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Unsqueeze", ["four", "ax"], ["four1"]),
        helper.make_node("Concat", ["n1", "four1"], ["target"], axis=0),
        helper.make_node("Reshape", ["pairs", "target"], ["boxes"]),
    ]
    inits = [helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, 4]),
             helper.make_tensor("i0", TensorProto.INT64, [], [0]),
             helper.make_tensor("i1", TensorProto.INT64, [], [1]),
             helper.make_tensor("ax", TensorProto.INT64, [1], [0])]
    graph = helper.make_graph(
        nodes, "clip", [helper.make_tensor_value_info("pairs", TensorProto.FLOAT, ["N", 2, 2])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_fold_known_dims_keeps_a_reshape_defined_for_zero_boxes() -> None:
    """In FCOS's graph ONNX Runtime rewrote such a shape as {0, -1}, which fails for N = 0
    (`Input shape:{0,2,2}, requested shape:{0,-1}`; the workflow test runs those images). Here:
    the known 4 becomes a constant, and the reshape gives N x 4 for N = 0 too."""
    import onnxruntime as ort

    patched, reports = apply_passes(_clip_boxes_graph(), ["fold_known_dims"],
                                    PatchContext("clip", "onnxruntime", {}))
    assert reports[0]["folded"] == 1 and "[1] = 4" in reports[0]["examples"][0]
    session = ort.InferenceSession(patched.SerializeToString(), providers=["CPUExecutionProvider"])
    for count in (0, 1, 3):
        pairs = np.arange(count * 4, dtype=np.float32).reshape(count, 2, 2)
        (boxes,) = session.run(None, {"pairs": pairs})
        assert np.array_equal(boxes, pairs.reshape(count, 4))


def _retinanet_level_graph(path: Path) -> Path:
    """A RetinaNet level's post-processing as torchvision writes it, exported: the regression
    head's N x -1 x 4 reshape (the 4 a constant, N read with Shape), the candidates above the
    threshold, torchvision's BoxCoder.decode_single (Slices every 4th column, Flatten) and
    clip_boxes_to_image (reshape to the decoded boxes' shape). ONNX shape inference knows no
    dim of the reshaped regression, so not the Flatten's 4 that clip_boxes reads back."""
    import torch
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.ops import boxes as box_ops

    class Level(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))

        def forward(self, features, anchors, scores):
            n, _, height, width = features.shape
            regression = features.view(n, -1, 4, height, width).permute(0, 3, 4, 1, 2)
            regression = regression.reshape(n, -1, 4)[0]
            keep = torch.where(scores > 0.5)[0]
            boxes = self.coder.decode_single(regression[keep], anchors[keep])
            return box_ops.clip_boxes_to_image(boxes, (64, 64))

    anchors = torch.rand(2 * 3 * 3, 4) * 32
    anchors[:, 2:] += anchors[:, :2]
    torch.onnx.export(Level().eval(), (torch.randn(1, 8, 3, 3), anchors, torch.rand(18)), str(path),
                      input_names=["features", "anchors", "scores"], output_names=["boxes"],
                      dynamic_axes={"features": {0: "n", 2: "h", 3: "w"}, "anchors": {0: "a"},
                                    "scores": {0: "a"}}, opset_version=17, dynamo=False)
    return path


def test_fold_known_dims_reads_dims_through_the_reshapes_shape_inference_misses(tmp_path: Path) -> None:
    """Issue 22: retinanet_resnet50_fpn_v2 failed in ONNX Runtime on every image where a level
    kept no box (`Reshape ... Input shape:{0,2,2}, requested shape:{0,-1}`): the 4 clip_boxes
    reads comes through a computed reshape, a Slice, box arithmetic, Concat and Flatten, none
    of which shape inference resolves there. fold_known_dims follows them and folds the 4; the
    graph then runs for zero kept boxes, and unpatched ONNX Runtime's failure is one trtflow
    error naming the node and the pass to keep."""
    import onnxruntime as ort

    from trtflow.runners.onnxruntime import run_failure

    source = _retinanet_level_graph(tmp_path / "level.onnx")
    rng = np.random.default_rng(0)
    anchors = (rng.random((18, 4)) * 32).astype(np.float32)
    anchors[:, 2:] += anchors[:, :2]
    feed = {"features": rng.normal(size=(1, 8, 3, 3)).astype(np.float32), "anchors": anchors}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # ReshapeFusion

    def run(model: bytes, scores: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return session.run(None, {**feed, "scores": scores})[0]

    def patched(passes: List[str]) -> bytes:
        model, reports = apply_passes(onnx.load(str(source)), passes,
                                      PatchContext("retina", "onnxruntime", {}))
        return model.SerializeToString(), reports

    none_kept = np.zeros(18, np.float32)
    # the workflow's passes without fold_known_dims: infer_shapes' value_info (no dims for the
    # reshaped regression) lets ReshapeFusion write {0, -1}
    unfolded, _ = patched(["fold_constants", "infer_shapes"])
    with pytest.raises(Exception) as failed:
        run(unfolded, none_kept)
    error = run_failure(failed.value, source, "retina")
    assert "ONNX Runtime failed at run time in Reshape node '" in str(error)
    assert "requested shape:{0,-1}" in str(error) and "fold_known_dims" in error.fix

    folded, reports = patched(["fold_constants", "fold_known_dims", "infer_shapes"])
    assert any(example.endswith("[1] = 4") for example in reports[1]["examples"]), reports[1]
    assert run(folded, none_kept).shape == (0, 4)
    some = (rng.random(18) > 0.5).astype(np.float32)
    assert np.allclose(run(folded, some), run(source.read_bytes(), some))


def _level_topk_graph() -> onnx.ModelProto:
    """A level's top min(3, n) scores, n the scores above the threshold (K from the data)."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["scores"], ["n"]),
        helper.make_node("Min", ["n", "limit"], ["k"]),
        helper.make_node("TopK", ["scores", "k"], ["top", "index"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "topk", [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("top", TensorProto.FLOAT, ["k"]),
         helper.make_tensor_value_info("index", TensorProto.INT64, ["k"])],
        [helper.make_tensor("limit", TensorProto.INT64, [1], [3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_guarded_topk_gives_the_same_top_k_for_every_count_zero_included() -> None:
    """TensorRT 8.6 refuses TopK with K = 0 at run time; the guarded form never runs one, and
    returns what the original does for n = 0, 1, 2, 5."""
    import onnxruntime as ort

    original = _level_topk_graph()
    patched, reports = apply_passes(original, ["guard_empty_topk"],
                                    PatchContext("topk", "tensorrt", {}))
    assert len(reports[0]["guarded"]) == 1
    ks = [n for n in patched.graph.node if n.op_type == "TopK"]
    assert len(ks) == 1 and ks[0].input[1].endswith("k_at_least_1")
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (original, patched)]
    for count in (0, 1, 2, 5):
        scores = np.random.default_rng(count).random(count).astype(np.float32)
        (top, index), (top_g, index_g) = (s.run(None, {"scores": scores}) for s in sessions)
        assert np.array_equal(top, top_g) and np.array_equal(index, index_g)
        assert len(top_g) == min(3, count)


def _batched_nms_graph(path: Path, kept: Optional[int] = None,
                       padded: bool = False) -> onnx.ModelProto:
    """torchvision's batched_nms as a detector's post-processing exports it: the coordinate
    trick, in a scripted function whose empty-input If inline_empty_guards removes; then
    keep[:kept] where given, as torchvision's RPN (1000) and box head (100) end, and padded to a
    static `kept` with -1 where asked (what an engine's runner reads)."""
    import torch
    from torchvision.ops import boxes as box_ops

    class Suppress(torch.nn.Module):
        def forward(self, boxes, scores, classes):
            keep = box_ops.batched_nms(boxes, scores, classes, 0.5)
            if kept is None:
                return keep
            if not padded:
                return keep[:kept]
            return torch.cat([keep[:kept], torch.full((kept,), -1, dtype=keep.dtype)])[:kept]

    count = 50
    corners = torch.rand(count, 2) * 100
    inputs = (torch.cat([corners, corners + 5 + torch.rand(count, 2) * 30], 1), torch.rand(count),
              torch.randint(0, 4, (count,)))
    torch.onnx.export(Suppress(), inputs, str(path), input_names=["boxes", "scores", "classes"],
                      output_names=["keep"], opset_version=17, dynamo=False,
                      dynamic_axes={"boxes": {0: "n"}, "scores": {0: "n"}, "classes": {0: "n"}})
    return onnx.load(str(path))


@pytest.mark.parametrize("count", [0, 1, 40, 400])
def test_multiclass_nms_keeps_what_batched_nms_keeps_in_its_order(tmp_path: Path, count: int) -> None:
    """One NMS over class-shifted boxes -> ONNX's per-class NMS: the same kept boxes in the same
    (descending score) order, for no candidate, one, and many in several classes."""
    import onnxruntime as ort
    import torch
    from torchvision.ops import boxes as box_ops

    original = _batched_nms_graph(tmp_path / "nms.onnx")
    passes = ["inline_empty_guards", "fold_constants", "multiclass_nms", "cleanup", "toposort"]
    patched, reports = apply_passes(original, passes, PatchContext("nms", "onnxruntime", {}))
    assert len(reports[2]["rewritten"]) == 1
    session = ort.InferenceSession(patched.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(count)
    corners = rng.random((count, 2), dtype=np.float32) * 100
    boxes = np.concatenate([corners, corners + 5 + rng.random((count, 2), dtype=np.float32) * 30], 1)
    scores = rng.permutation(count).astype(np.float32) / max(count, 1) + 0.01  # distinct
    classes = rng.integers(0, 6, count)
    (keep,) = session.run(None, {"boxes": boxes, "scores": scores, "classes": classes})
    expected = box_ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                   torch.from_numpy(classes), 0.5).numpy()
    assert np.array_equal(keep, expected)
    assert count < 40 or len(expected) > 6  # several classes kept, not one class's boxes


def test_multiclass_nms_is_for_onnx_runtime_unless_asked(tmp_path: Path) -> None:
    original = _batched_nms_graph(tmp_path / "nms.onnx")
    for backend, options, rewritten in (("tensorrt", {}, 0), ("tensorrt", {"multiclass_nms": "always"}, 1),
                                        ("onnxruntime", {"multiclass_nms": "never"}, 0)):
        _, reports = apply_passes(original, ["inline_empty_guards", "multiclass_nms"],
                                  PatchContext("nms", backend, options))
        assert len(reports[1]["rewritten"]) == rewritten, (backend, options)


def _detections(count: int, classes: int, seed: int = 0):
    """Boxes of a 1344 image in `classes` classes: class-shifted, they reach 91 x 1345 (inf in
    fp16) for a box head's 91."""
    rng = np.random.default_rng(seed)
    # corners up to 1200, boxes of 1/3 of that and 1/3 apart at most: most of a class's overlap
    corners = 800 + rng.random((count, 2), dtype=np.float32) * 400
    boxes = np.concatenate([corners - 400, corners + rng.random((count, 2), dtype=np.float32) * 100], 1)
    scores = rng.permutation(count).astype(np.float32) / max(count, 1) + 0.01  # distinct
    return {"boxes": boxes, "scores": scores, "classes": rng.integers(0, classes, count)}


def _torchvision_keep(feed: Dict[str, np.ndarray], kept: int) -> np.ndarray:
    """What torchvision's batched_nms keeps of `feed`, its first `kept`."""
    import torch
    from torchvision.ops import boxes as box_ops

    return box_ops.batched_nms(*(torch.from_numpy(feed[k]) for k in ("boxes", "scores", "classes")),
                               0.5)[:kept].numpy()


LEVELS = 5  # an FPN RPN's


def _per_level_module(kept: int, padded: bool = False, levels: int = LEVELS):
    """torchvision's RPN post-processing (RegionProposalNetwork.filter_proposals) on its own:
    each level's candidates tagged with the level by torch.full, a score filter (a count known at
    run time only), a batched NMS over levels, its first `kept`; padded to `kept` with -1 where
    asked (what an engine's runner reads)."""
    import torch
    from torchvision.ops import boxes as box_ops

    class Proposals(torch.nn.Module):
        def forward(self, boxes, scores):  # [levels x m, 4], [levels x m]: m a level
            per_level = boxes.shape[0] // levels
            ids = torch.cat([torch.full((per_level,), level, dtype=torch.int64)
                             for level in range(levels)])
            chosen = torch.where(scores >= 0.05)[0]
            keep = box_ops.batched_nms(boxes[chosen], scores[chosen], ids[chosen], 0.7)[:kept]
            if padded:
                keep = torch.cat([keep, torch.full((kept,), -1, dtype=keep.dtype)])[:kept]
            return keep

    return Proposals()


def _per_level_nms_graph(path: Path, kept: int, padded: bool = False,
                         levels: int = LEVELS) -> onnx.ModelProto:
    import torch

    inputs = (torch.rand(levels * 10, 4) * 100 + torch.tensor([0, 0, 100, 100]), torch.rand(levels * 10))
    torch.onnx.export(_per_level_module(kept, padded, levels), inputs, str(path),
                      input_names=["boxes", "scores"], output_names=["keep"], opset_version=17,
                      dynamo=False, dynamic_axes={"boxes": {0: "n"}, "scores": {0: "n"}})
    return onnx.load(str(path))


def _proposals(per_level: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """LEVELS x per_level candidates of a 1344 image, overlapping as an RPN's do; distinct
    scores (apart by more than fp16's step), some under the filter's 0.05 (none within fp16's
    step of it), the levels' mixed."""
    feed = _detections(LEVELS * per_level, 1, seed)
    feed["scores"] = (feed["scores"] - 0.0412).astype(np.float32)
    return {"boxes": feed["boxes"], "scores": feed["scores"]}


def _proposals_keep(feed: Dict[str, np.ndarray], kept: int, padded: bool = False) -> np.ndarray:
    import torch

    return _per_level_module(kept, padded)(*(torch.from_numpy(feed[k]) for k in ("boxes", "scores"))).numpy()


EFFICIENT_NMS_PASSES = ["inline_empty_guards", "fold_constants", "efficient_nms", "cleanup", "toposort"]
AUTO = {"efficient_nms": "auto"}  # the schema's default is never (not yet run on TensorRT)


def test_efficient_nms_puts_the_plugin_where_the_nms_was_with_the_models_kept_count(
        tmp_path: Path) -> None:
    """Node by node: one EfficientNMS_ONNX_TRT reading the NMS's own boxes and its scores as
    [B, N, 1], limited to the 20 the model keeps after it, its padding rows (copies of the last
    valid row, or -1) left out; no ONNX NMS left; the class shift marked fp32."""
    from trtflow.nms import FP32_LAYER_MARK, PLUGIN_DOMAIN

    original = _batched_nms_graph(tmp_path / "nms.onnx", 20)
    nms_inputs = [next(n for n in apply_passes(original, EFFICIENT_NMS_PASSES[:2], PatchContext(
        "nms", "tensorrt", {}, backend_version="8.6.0"))[0].graph.node
        if n.op_type == "NonMaxSuppression").input[i] for i in (0, 1)]
    patched, reports = apply_passes(original, EFFICIENT_NMS_PASSES,
                                    PatchContext("nms", "tensorrt", AUTO, backend_version="8.6.0"))
    assert reports[2]["rewritten"] == [{"node": reports[2]["rewritten"][0]["node"],
                                        "max_output_boxes": 20, "kept_after": 20,
                                        "candidates_limit": 4096, "class_images": None,
                                        "filters_as_mask": [],
                                        "filters_kept": "no NonZero filter before it",
                                        "static_rows": [], "zeroed_past_kept": [],
                                        "rows_cut": "its filters are not folded"}]
    nodes = list(patched.graph.node)
    assert not [n for n in nodes if n.op_type == "NonMaxSuppression"]
    (plugin,) = [n for n in nodes if n.op_type == "EfficientNMS_ONNX_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in plugin.attribute}
    assert plugin.domain == PLUGIN_DOMAIN and attrs["max_output_boxes_per_class"] == 20
    assert attrs["iou_threshold"] == pytest.approx(0.5) and attrs["center_point_box"] == 0
    assert attrs["score_threshold"] < -1e38 and attrs["plugin_version"] == b"1"
    assert plugin.input[0] == nms_inputs[0]
    (transpose,) = [n for n in nodes if n.output[0] == plugin.input[1]]
    assert transpose.op_type == "Transpose" and transpose.input[0] == nms_inputs[1]
    assert [a.ints for a in transpose.attribute] == [[0, 2, 1]]
    assert PLUGIN_DOMAIN in [d.domain for d in patched.opset_import]
    shift = [n.op_type for n in nodes if FP32_LAYER_MARK in n.name and n.op_type in ("Add", "Mul")]
    assert "Add" in shift and "Mul" in shift
    # the valid rows by NonZero -> Gather: a Slice ending at a count summed from the rows has no
    # implementation in TensorRT 8.6's Myelin (benchmarks/gpu/detectors.md)
    made = {o: n for n in nodes for o in n.output}
    readers = [n for n in nodes if plugin.output[0] in n.input]
    (take,) = [n for n in readers if n.op_type == "Gather" and n.input[0] == plugin.output[0]
               and getattr(made.get(n.input[1]), "op_type", None) == "Squeeze"]
    nonzero = made[made[take.input[1]].input[0]]
    assert nonzero.op_type == "NonZero"
    valid = made[nonzero.input[0]]  # box >= 0 and not the row before's box
    assert valid.op_type == "And"
    assert sorted(made[t].op_type for t in valid.input) == ["GreaterOrEqual", "Not"]
    assert not [n for n in readers if n.op_type == "Slice"]
    assert not [n for n in nodes if n.op_type == "ReduceSum" and FP32_LAYER_MARK in n.name]
    onnx.checker.check_model(patched)


@pytest.mark.parametrize("count", [0, 1, 12, 400])
def test_efficient_nms_standing_for_its_ops_keeps_what_batched_nms_keeps(tmp_path: Path,
                                                                          count: int) -> None:
    """The plugin's standard-op form (what int8 calibration runs) keeps what torchvision keeps,
    in its order, and so does its fp16 graph: the class shift stays fp32 there (shifted by 91
    classes, the boxes are inf in fp16 and the kept set changes)."""
    import onnxruntime as ort

    from trtflow.nms import onnxruntime_runnable
    from trtflow.precision import to_fp16

    original = _batched_nms_graph(tmp_path / "nms.onnx", 20)
    patched, _ = apply_passes(original, EFFICIENT_NMS_PASSES,
                              PatchContext("nms", "tensorrt", AUTO, backend_version="8.6.0"))
    onnx.save(patched, str(tmp_path / "patched.onnx"))
    to_fp16(tmp_path / "patched.onnx", tmp_path / "fp16.onnx")
    feed = _detections(count, 91)
    expected = _torchvision_keep(feed, 20)
    assert count < 400 or len(expected) == 20
    for graph in (patched, onnx.load(str(tmp_path / "fp16.onnx"))):
        session = ort.InferenceSession(onnxruntime_runnable(graph).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        (keep,) = session.run(None, feed)
        assert np.array_equal(keep, expected)


def test_efficient_nms_runs_an_rpns_levels_as_plugin_images_of_their_own(tmp_path: Path) -> None:
    """Node by node: the RPN's batched NMS over its 5 levels (ids bounded by the graph: a
    ConstantOfShape per level) is one plugin call of 5 images, each reading every unshifted box
    and its score where the level is its own (a score under the threshold where not); the kept
    rows ranked by one TopK of K; no class shift left."""
    from trtflow.nms import FP32_LAYER_MARK

    patched, reports = apply_passes(_per_level_nms_graph(tmp_path / "rpn.onnx", 20), EFFICIENT_NMS_PASSES,
                                    PatchContext("rpn", "tensorrt", AUTO, backend_version="8.6.0"))
    (entry,) = reports[2]["rewritten"]
    assert entry["class_images"] == LEVELS and entry["max_output_boxes"] == 20
    nodes = list(patched.graph.node)
    made = {o: n for n in nodes for o in n.output}
    (plugin,) = [n for n in nodes if n.op_type == "EfficientNMS_ONNX_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in plugin.attribute}
    assert attrs["max_output_boxes_per_class"] == 20 and attrs["iou_threshold"] == pytest.approx(0.7)
    # the images' own scores moved to 1 and above, the others' at 0, under a threshold of 0.5:
    # with one below 0.007 the plugin would keep the others' too (EfficientNMSDenseIndex)
    assert attrs["score_threshold"] == pytest.approx(0.5)
    expand = made[plugin.input[0]]
    assert expand.op_type == "Expand"
    assert onnx.numpy_helper.to_array(next(i for i in patched.graph.initializer
                                           if i.name == expand.input[1])).tolist() == [LEVELS, 1, 1]
    where = made[made[plugin.input[1]].input[0]]  # Unsqueeze <- Where(level == c, moved score, 0)
    assert where.op_type == "Where" and made[where.input[0]].op_type == "Equal"
    assert made[made[where.input[1]].input[0]].op_type == "Sub"  # score + 1 - min(lowest, 0)
    (topk,) = [n for n in nodes if n.op_type == "TopK"]
    assert FP32_LAYER_MARK in topk.name
    assert onnx.numpy_helper.to_array(next(i for i in patched.graph.initializer
                                           if i.name == topk.input[1])).tolist() == [20]
    assert not [n for n in nodes if n.op_type in ("NonMaxSuppression", "ReduceMax")]
    onnx.checker.check_model(patched)


@pytest.mark.parametrize("levels, images", [(2, 2), (16, 16), (17, None)])
def test_efficient_nms_makes_class_images_for_16_classes_at_most(tmp_path: Path, levels: int,
                                                                 images: Optional[int]) -> None:
    """Up to 16 classes the graph bounds (an RPN's levels) become plugin images; beyond, the NMS
    stays one image (each image reads every candidate: a box head's 91 classes would copy them
    91 times), its class shift marked fp32."""
    from trtflow.nms import FP32_LAYER_MARK

    patched, reports = apply_passes(_per_level_nms_graph(tmp_path / "ids.onnx", 20, levels=levels),
                                    EFFICIENT_NMS_PASSES,
                                    PatchContext("ids", "tensorrt", AUTO, backend_version="8.6.0"))
    assert reports[2]["rewritten"][0]["class_images"] == images
    marked = [n.op_type for n in patched.graph.node if FP32_LAYER_MARK in n.name]
    assert ("Expand" in marked) == (images is not None)
    assert ("TopK" in marked) == (images is not None)


@pytest.mark.parametrize("per_level", [0, 1, 3, 80])
def test_efficient_nms_per_level_standing_for_its_ops_keeps_what_the_rpn_keeps(
        tmp_path: Path, per_level: int) -> None:
    """The per-level plugin's standard-op form keeps what torchvision's RPN keeps, in its order,
    in fp32 and fp16: with 80 a level several levels keep more than the 20 kept in all, so the
    ranking across levels decides."""
    import onnxruntime as ort

    from trtflow.nms import onnxruntime_runnable
    from trtflow.precision import to_fp16

    patched, _ = apply_passes(_per_level_nms_graph(tmp_path / "rpn.onnx", 20), EFFICIENT_NMS_PASSES,
                              PatchContext("rpn", "tensorrt", AUTO, backend_version="8.6.0"))
    onnx.save(patched, str(tmp_path / "patched.onnx"))
    to_fp16(tmp_path / "patched.onnx", tmp_path / "fp16.onnx")
    feed = _proposals(per_level)
    expected = _proposals_keep(feed, 20)
    if per_level == 80:
        assert len(expected) == 20
        levels = np.flatnonzero(feed["scores"] >= 0.05)[expected] // per_level
        assert len(set(levels.tolist())) > 2  # the first 20 come from several levels
    for graph in (patched, onnx.load(str(tmp_path / "fp16.onnx"))):
        session = ort.InferenceSession(onnxruntime_runnable(graph).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        (keep,) = session.run(None, feed)
        assert np.array_equal(keep, expected), (keep, expected)


def test_efficient_nms_is_for_tensorrt_before_10_12_and_off_unless_asked(tmp_path: Path) -> None:
    original = _batched_nms_graph(tmp_path / "nms.onnx", 20)
    for backend, version, options, rewritten in (
            ("tensorrt", "8.6.0", AUTO, 1), ("tensorrt", "10.11.0", AUTO, 1),
            ("tensorrt", "10.12.0", AUTO, 0), ("tensorrt", "11.0.0", AUTO, 0),
            ("tensorrt", "8.6.0", {"efficient_nms": "never"}, 0), ("tensorrt", "8.6.0", {}, 0),
            ("onnxruntime", "", AUTO, 0), ("onnxruntime", "", {"efficient_nms": "always"}, 1)):
        _, reports = apply_passes(original, EFFICIENT_NMS_PASSES[:3],
                                  PatchContext("nms", backend, options, backend_version=version))
        assert len(reports[2]["rewritten"]) == rewritten, (backend, version, options)


def test_debug_precision_runs_a_tensorrt_graph_with_the_plugin_as_its_standard_ops(
        tmp_path: Path) -> None:
    """debug_precision simulates a TensorRT cell on ONNX Runtime: a graph holding the NMS plugin
    runs there as the ops it stands for, with torchvision's result."""
    from trtflow.debug import Runtime

    patched, _ = apply_passes(_batched_nms_graph(tmp_path / "nms.onnx", 20), EFFICIENT_NMS_PASSES,
                              PatchContext("nms", "tensorrt", AUTO, backend_version="8.6.0"))
    feed = _detections(400, 91)
    (keep,) = Runtime("tensorrt").session(patched).run(None, feed)
    expected = _torchvision_keep(feed, 20)
    assert np.array_equal(keep, expected)
