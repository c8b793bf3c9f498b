"""trtflow.shapes: the synthetic scenes, the `data: shapes` input kind, and training a built-in
detector on them into a checkpoint the weights stage loads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trtflow.data import input_set
from trtflow.errors import TrtflowError
from trtflow.models import build_model, load_weights, with_wrapper_prefix
from trtflow.shapes import (SHAPE_CLASSES, boundary_keypoints, deploy_spec, evaluate, render_scene,
                            scene_class, train)
from trtflow.weights import prepare_weights


def test_scene_annotations_agree_with_the_pixels() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        scene = render_scene(rng, 384, 320)
        count = len(scene.labels)
        assert count >= 1
        assert scene.image.shape == (384, 320, 3) and scene.image.dtype == np.float32
        assert 0.0 <= scene.image.min() and scene.image.max() <= 1.0
        assert scene.masks.shape == (count, 384, 320) and scene.keypoints.shape == (count, 17, 3)
        assert set(scene.labels.tolist()) <= set(range(1, len(SHAPE_CLASSES) + 1))
        assert scene.masks.sum(axis=0).max() == 1  # objects never overlap
        for box, mask, points in zip(scene.boxes, scene.masks, scene.keypoints):
            rows, cols = np.nonzero(mask)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            x, y = points[:, 0], points[:, 1]
            assert ((x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])).all()
            assert (points[:, 2] == 2).all()


def test_keypoints_are_where_the_rays_leave_the_shape() -> None:
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[30:71, 20:81] = 1  # a 61 x 41 rectangle centred on (50, 50)
    points = boundary_keypoints(mask, 4)  # right, up, left, down
    np.testing.assert_allclose(points[:, :2], [[80.5, 50.5], [50.5, 30.5], [20.5, 50.5], [50.5, 70.5]])


def test_scenes_repeat_by_seed_and_differ_by_purpose() -> None:
    specs = [{"name": "images", "shape": [3, 256, 256], "dtype": "float32", "data": "shapes"}]
    first, names = input_set("det", specs, 3, "validation", seed=0)
    again, _ = input_set("det", specs, 3, "validation", seed=0)
    calibration, _ = input_set("det", specs, 3, "calibration", seed=0)
    assert first["images"].shape == (3, 3, 256, 256) and names == ["shapes0", "shapes1", "shapes2"]
    np.testing.assert_array_equal(first["images"], again["images"])
    assert not np.array_equal(first["images"], calibration["images"])


def test_a_bare_detector_checkpoint_loads_into_the_deploy_module() -> None:
    deploy = build_model("m", deploy_spec("maskrcnn_r50_fpn", 256))
    bare = {k.removeprefix("detector."): v + 1 for k, v in deploy.state_dict().items()}
    load_weights(deploy, bare, "m", "maskrcnn_r50_fpn", "bare.pt")
    key = "detector.roi_heads.box_predictor.cls_score.bias"
    assert torch.equal(deploy.state_dict()[key], bare[key.removeprefix("detector.")])
    # keys that match neither way are left alone, and the mismatch is still reported
    assert with_wrapper_prefix(deploy.state_dict().keys(), {"other.weight": torch.zeros(1)}) == \
        {"other.weight": torch.zeros(1)}
    with pytest.raises(TrtflowError, match="do not match architecture"):
        load_weights(deploy, {"other.weight": torch.zeros(1)}, "m", "maskrcnn_r50_fpn", "bad.pt")


@pytest.mark.parametrize("architecture", ["maskrcnn_r50_fpn", "keypointrcnn_r50_fpn", "rtdetr_r18"])
def test_training_writes_a_checkpoint_the_weights_stage_loads(tmp_path: Path, architecture: str) -> None:
    checkpoint = tmp_path / f"{architecture}.pt"
    result = train(architecture, checkpoint, size=192, steps=2, batch=1, device="cpu", workers=0)
    assert result["steps"] == 2 and np.isfinite(result["final_loss"]) and checkpoint.exists()
    assert not any(k.startswith("detector.") for k in torch.load(checkpoint, weights_only=True))
    entry = {**deploy_spec(architecture, 256), "weights": {"path": str(checkpoint)}}
    meta = prepare_weights("det", entry, tmp_path / "cache", tmp_path / "w.pt", tmp_path / "w.json")
    assert meta["weights"] == "checkpoint" and meta["source"] == str(checkpoint)


def test_training_an_architecture_that_is_no_classifier_is_refused(tmp_path: Path) -> None:
    # DeepLabV3 takes num_classes but answers per pixel, in a dict
    with pytest.raises(TrtflowError, match="cannot train 'deeplabv3_resnet50'.*not a classifier"):
        train("deeplabv3_resnet50", tmp_path / "x.pt", size=64, device="cpu")
    assert not (tmp_path / "x.pt").exists()


def test_a_scene_class_is_the_class_of_its_largest_object() -> None:
    rng = np.random.default_rng(5)
    scene = render_scene(rng, 320, 320)
    while len(scene.labels) < 2 or len(set(scene.labels.tolist())) < 2:
        scene = render_scene(rng, 320, 320)
    largest = int(np.argmax(scene.masks.sum(axis=(1, 2))))
    assert scene_class(scene) == scene.labels[largest] - 1


def test_a_classifier_trains_on_scenes_into_a_checkpoint_the_weights_stage_loads(tmp_path: Path) -> None:
    architecture = "torchvision.models:efficientnet_v2_s"  # SiLU, BatchNorm: issue 10's int8 case
    checkpoint = tmp_path / "effnet.pt"
    result = train(architecture, checkpoint, size=64, steps=2, batch=2, device="cpu", workers=0)
    assert result["steps"] == 2 and np.isfinite(result["final_loss"]) and checkpoint.exists()
    state = torch.load(checkpoint, weights_only=True)
    assert state["classifier.1.weight"].shape[0] == len(SHAPE_CLASSES)
    spec = deploy_spec(architecture, 96)
    assert spec["architecture_kwargs"] == {"num_classes": len(SHAPE_CLASSES)}
    meta = prepare_weights("effnet", {**spec, "weights": {"path": str(checkpoint)}}, tmp_path / "cache",
                           tmp_path / "w.pt", tmp_path / "w.json")
    assert meta["weights"] == "checkpoint"
    accuracy = evaluate(architecture, checkpoint, 96, count=1, device="cpu")
    assert accuracy["scenes"] == 8 and 0.0 <= accuracy["accuracy"] <= 1.0
