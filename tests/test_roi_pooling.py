"""trtflow.roi_pooling.pyramid_roialign: torchvision's MultiScaleRoIAlign (an FPN's RoI pooling,
one NonZero + RoiAlign + ScatterElements per level) as one GridSample over the levels side by
side, checked against torchvision itself on ONNX Runtime and node by node."""
from __future__ import annotations

import collections
from pathlib import Path
from typing import List, Tuple

import numpy as np
import onnx
import pytest

from trtflow.patch import PatchContext, apply_passes

IMAGE = 256
CHANNELS = 8
LEVELS = ("0", "1", "2", "3")  # P2..P5: strides 4, 8, 16, 32
PASSES = ["fold_constants", "cleanup", "pyramid_roialign", "roialign_to_gridsample", "infer_shapes"]


def _pools_module(batch: int):
    """Mask R-CNN's two poolings of the same FPN levels: the box head's 7x7, the mask head's
    14x14 (torchvision's MaskRCNN defaults: sampling ratio 2)."""
    import torch
    from torchvision.ops import MultiScaleRoIAlign

    class Pools(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.box = MultiScaleRoIAlign(list(LEVELS), 7, 2)
            self.mask = MultiScaleRoIAlign(list(LEVELS), 14, 2)

        def forward(self, p2, p3, p4, p5, boxes):
            features = dict(zip(LEVELS, (p2, p3, p4, p5)))
            per_image = [boxes] * batch
            sizes = [(IMAGE, IMAGE)] * batch
            return self.box(features, per_image, sizes), self.mask(features, per_image, sizes)

    return Pools().eval()


def _features(batch: int, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, CHANNELS, IMAGE // 4 >> i, IMAGE // 4 >> i)).astype(np.float32)
            for i in range(len(LEVELS))]


def _boxes(count: int, seed: int = 0) -> np.ndarray:
    """Boxes of every FPN level's size (sqrt(area) from under a pixel to the whole image), some
    on the image's edges, some degenerate (zero width, a point), as the RPN hands them over."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, IMAGE - 1, (count, 2))
    size = np.exp(rng.uniform(np.log(0.3), np.log(IMAGE), (count, 2)))
    boxes = np.concatenate([corner, np.minimum(corner + size, IMAGE)], 1).astype(np.float32)
    special = [[0, 0, 0.3, 0.2], [10, 10, 10.5, 200], [0, 0, IMAGE, IMAGE], [100, 100, 100, 100],
               [IMAGE - 1, IMAGE - 1, IMAGE, IMAGE], [0, 30, 112, 142], [40, 0, 264 - 40, 224]]
    boxes[:len(special)] = special
    return boxes


def _exported(path: Path, batch: int = 1) -> Path:
    import torch

    inputs = tuple(torch.from_numpy(f) for f in _features(batch)) + (torch.from_numpy(_boxes(40)),)
    torch.onnx.export(_pools_module(batch), inputs, str(path), opset_version=17, dynamo=False,
                      input_names=["p2", "p3", "p4", "p5", "boxes"], output_names=["box", "mask"],
                      dynamic_axes={"boxes": {0: "R"}, "box": {0: "R"}, "mask": {0: "R"}})
    return path


def _torchvision(features: List[np.ndarray], boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        out = _pools_module(1)(*(torch.from_numpy(f) for f in features), torch.from_numpy(boxes))
    return tuple(o.numpy() for o in out)


def _patched(source: Path, backend: str = "tensorrt", **policies: str):
    version = "8.6.0" if backend == "tensorrt" else ""
    return apply_passes(onnx.load(str(source)), PASSES, PatchContext("m", backend, policies, version))


@pytest.fixture(scope="module")
def pools_onnx(tmp_path_factory) -> Path:
    return _exported(tmp_path_factory.mktemp("pyramid") / "pools.onnx")


def test_pyramid_pools_every_roi_from_its_level_as_multiscale_roialign_does(pools_onnx: Path) -> None:
    import onnxruntime as ort

    patched, reports = _patched(pools_onnx)
    report = next(r for r in reports if r["pass"] == "pyramid_roialign")
    assert [r["levels"] for r in report["rewritten"]] == [4, 4] and report["kept"] == {}
    assert report["atlases"] == 1  # both poolings sample one image of the levels
    ops = collections.Counter(n.op_type for n in patched.graph.node)
    # no data-dependent shape is left: no level's NonZero, no scatter back, no RoiAlign
    assert not {"NonZero", "ScatterElements", "RoiAlign"} & set(ops)
    assert ops["GridSample"] == 2 and ops["AveragePool"] == 2 and ops["Pad"] == 3
    session = ort.InferenceSession(patched.SerializeToString())
    names = [i.name for i in patched.graph.input]
    for count in (200, 1, 0):
        features, boxes = _features(1, seed=count), _boxes(max(count, 7), seed=count)[:count]
        feed = dict(zip(names, features + [boxes]))
        expected = _torchvision(features, boxes)
        got = session.run(None, feed)
        for name, want, have in zip(("box", "mask"), expected, got):
            assert have.shape == want.shape, (name, count)
            np.testing.assert_allclose(have, want, atol=1e-4, err_msg=f"{name}, {count} boxes")


def test_pyramid_levels_are_the_graphs_own(pools_onnx: Path) -> None:
    """A box on each side of every level threshold (sqrt(area) 112, 224, 448 at canonical 224)
    pools from the level torchvision's LevelMapper gives it: a wrong level moves its samples to
    another feature map entirely."""
    import onnxruntime as ort

    patched, _ = _patched(pools_onnx)
    sides = [s for threshold in (112, 224, 448) for s in (threshold - 2, threshold + 2)]
    boxes = np.array([[0, 0, min(s, IMAGE), s * s / min(s, IMAGE)] for s in sides], np.float32)
    features = _features(1, seed=3)
    got = ort.InferenceSession(patched.SerializeToString()).run(
        None, dict(zip([i.name for i in patched.graph.input], features + [boxes])))
    for want, have in zip(_torchvision(features, boxes), got):
        np.testing.assert_allclose(have, want, atol=1e-4)


def test_pyramid_is_for_tensorrt_unless_asked(pools_onnx: Path) -> None:
    skipped = next(r for r in _patched(pools_onnx, "onnxruntime")[1] if r["pass"] == "pyramid_roialign")
    assert skipped["skipped"] == "policy 'auto' for backend 'onnxruntime'"
    asked = next(r for r in _patched(pools_onnx, "onnxruntime", pyramid_roialign="always")[1]
                 if r["pass"] == "pyramid_roialign")
    assert len(asked["rewritten"]) == 2
    never = _patched(pools_onnx, "tensorrt", pyramid_roialign="never")
    assert next(r for r in never[1] if r["pass"] == "pyramid_roialign")["rewritten"] == []
    # the RoiAligns are then left to roialign_to_gridsample, one GridSample each
    assert collections.Counter(n.op_type for n in never[0].graph.node)["GridSample"] == 8


def test_pyramid_of_several_images_is_kept_with_the_reason(tmp_path: Path) -> None:
    patched, reports = _patched(_exported(tmp_path / "batch2.onnx", batch=2))
    report = next(r for r in reports if r["pass"] == "pyramid_roialign")
    assert report["rewritten"] == [] and len(report["kept"]) == 8
    assert all("static batch 1" in reason for reason in report["kept"].values())
    assert "NonZero" in {n.op_type for n in patched.graph.node}
