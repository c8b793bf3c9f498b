"""trtflow.preprocess: each photo input's mean/std, crop and interpolation, from the input's own
block, a timm model's pretrained config, or the data kind (issue 22 item 7)."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import pytest

from trtflow.data import input_set
from unit_helpers import validated_spec

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 0.875,
            "interpolation": "bilinear"}


def timm_entry(name: str, data: str = "imagenet_samples", **preprocess: Any) -> Dict[str, Any]:
    image = {"name": "input", "shape": [3, 32, 32], "dtype": "float32", "data": data}
    if preprocess:
        image["preprocess"] = preprocess
    return {"architecture": "timm:create_model",
            "architecture_kwargs": {"model_name": name, "pretrained": False},
            "weights": {"random": True}, "inputs": [image], "outputs": ["logits"]}


def resolved(entry: Dict[str, Any]) -> Dict[str, Any]:
    return validated_spec("net", entry)["inputs"][0]["preprocess"]


def test_a_timm_model_gets_its_pretrained_configs_preprocessing() -> None:
    """timm's ViT takes mean 0.5 / std 0.5, a 0.9 crop and bicubic resizing, not ImageNet's."""
    assert resolved(timm_entry("vit_tiny_patch16_224")) == {
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 0.9,
        "interpolation": "bicubic"}


def test_the_inputs_own_keys_win_key_by_key() -> None:
    assert resolved(timm_entry("vit_tiny_patch16_224", crop_pct=1.0)) == {
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0,
        "interpolation": "bicubic"}


def test_other_models_get_the_data_kinds_preprocessing() -> None:
    entry = timm_entry("resnet18")
    entry["architecture"] = "resnet18"
    del entry["architecture_kwargs"]
    assert resolved(entry) == IMAGENET
    entry["inputs"][0]["data"] = "photos"  # RGB in [0, 1], for detectors that normalise inside
    assert resolved(entry) == {**IMAGENET, "mean": [0.0] * 3, "std": [1.0] * 3}
    # a timm model's config is for its ImageNet inputs: its photos stay in [0, 1]
    assert resolved(timm_entry("vit_tiny_patch16_224", data="photos"))["mean"] == [0.0] * 3


def test_a_bad_preprocess_block_is_refused_with_the_key() -> None:
    from trtflow.errors import TrtflowError

    with pytest.raises(TrtflowError, match="preprocess.*interpolation"):
        resolved(timm_entry("resnet18", interpolation="lanczos"))


@pytest.mark.parametrize("purpose", ["validation", "calibration"])
def test_the_inputs_are_made_with_that_preprocessing(purpose: str) -> None:
    vit = validated_spec("net", timm_entry("vit_tiny_patch16_224"))["inputs"]
    plain = validated_spec("net", timm_entry("vit_tiny_patch16_224", mean=[0.0] * 3,
                                             std=[1.0] * 3))["inputs"]
    imagenet = validated_spec("net", timm_entry("vit_tiny_patch16_224", **IMAGENET))["inputs"]
    torchvision_crop = validated_spec("net", timm_entry(
        "vit_tiny_patch16_224", **{**IMAGENET, "mean": [0.0] * 3, "std": [1.0] * 3}))["inputs"]
    arrays = {name: input_set("net", specs, 4, purpose)[0]["input"]
              for name, specs in (("vit", vit), ("plain", plain), ("imagenet", imagenet),
                                  ("torchvision_crop", torchvision_crop))}
    assert -1.0 <= arrays["vit"].min() and arrays["vit"].max() <= 1.0
    np.testing.assert_allclose(arrays["vit"], arrays["plain"] * 2.0 - 1.0, atol=1e-5)
    assert arrays["imagenet"].min() < -1.5  # ImageNet's std stretches [0, 1] to about [-2.1, 2.6]
    if purpose == "validation":  # the same photos in [0, 1]: a 0.9 crop is not a 0.875 one
        assert np.abs(arrays["plain"] - arrays["torchvision_crop"]).mean() > 0.01
