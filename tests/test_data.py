"""trtflow.data: sample photos, ImageNet preprocessing, synthetic inputs, batching."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import pytest

from trtflow.data import (EXPECTED_IMAGENET_CLASSES, IMAGENET_MEAN, SAMPLE_PHOTOS, batch_of,
                          center_crop, input_set, load_photo, normalize_chw, random_crop,
                          synthetic)
from trtflow.errors import TrtflowError

IMAGE_SPEC = {"name": "input", "shape": [3, 32, 32], "dtype": "float32", "data": "imagenet_samples"}
TOKEN_SPEC = {"name": "tokens", "shape": [16], "dtype": "int64", "range": [0, 100]}


@pytest.fixture(scope="module")
def validation_set() -> Tuple[Dict[str, np.ndarray], List[str]]:
    return input_set("net", [IMAGE_SPEC, TOKEN_SPEC], 12, "validation")


def test_validation_set_shapes_dtypes_and_names(validation_set) -> None:
    arrays, names = validation_set
    assert set(arrays) == {"input", "tokens"}
    assert arrays["input"].shape == (12, 3, 32, 32) and arrays["input"].dtype == np.float32
    assert arrays["tokens"].shape == (12, 16) and arrays["tokens"].dtype == np.int64
    assert names[:10] == list(SAMPLE_PHOTOS)
    assert names[:2] == ["chelsea", "coffee"]
    assert names[10:] == ["chelsea_flipped", "coffee_flipped"]
    assert np.isfinite(arrays["input"]).all()


def test_flipped_samples_mirror_the_first_ones(validation_set) -> None:
    arrays, _ = validation_set
    np.testing.assert_array_equal(arrays["input"][10], arrays["input"][0][:, :, ::-1])
    assert not np.array_equal(arrays["input"][10], arrays["input"][0])


def test_validation_images_are_imagenet_normalised(validation_set) -> None:
    arrays, _ = validation_set
    images = arrays["input"][:10]
    # the inverse of the normalisation gives pixels in [0, 1] (up to resize overshoot)
    pixels = images * np.array([0.229, 0.224, 0.225])[:, None, None] + IMAGENET_MEAN[:, None, None]
    assert pixels.min() > -0.05 and pixels.max() < 1.05
    assert images.std() > 0.5  # not all one colour


def test_calibration_set_differs_from_validation_set(validation_set) -> None:
    validation, _ = validation_set
    calibration, names = input_set("net", [IMAGE_SPEC, TOKEN_SPEC], 12, "calibration")
    assert calibration["input"].shape == validation["input"].shape
    assert calibration["tokens"].dtype == np.int64
    assert names[:3] == ["chelsea_crop0", "coffee_crop1", "astronaut_crop2"]
    for name in ("input", "tokens"):
        assert not np.array_equal(calibration[name], validation[name])
    # even per sample: no calibration image is a validation image
    assert all(not np.allclose(c, v) for c, v in zip(calibration["input"], validation["input"]))


def test_synthetic_validation_and_calibration_sets_differ() -> None:
    """Seeded by purpose: a synthetic-only model never calibrates on its validation inputs."""
    validation, _ = input_set("tok", [TOKEN_SPEC], 4, "validation")
    calibration, _ = input_set("tok", [TOKEN_SPEC], 4, "calibration")
    assert validation["tokens"].shape == calibration["tokens"].shape == (4, 16)
    assert not np.array_equal(validation["tokens"], calibration["tokens"])


def test_input_set_is_reproducible_and_seeded() -> None:
    first, _ = input_set("net", [IMAGE_SPEC, TOKEN_SPEC], 4, "calibration", seed=1)
    again, _ = input_set("net", [IMAGE_SPEC, TOKEN_SPEC], 4, "calibration", seed=1)
    other, _ = input_set("net", [IMAGE_SPEC, TOKEN_SPEC], 4, "calibration", seed=2)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name])


def test_synthetic_only_set_has_generic_sample_names() -> None:
    arrays, names = input_set("tok", [TOKEN_SPEC], 3, "validation")
    assert names == ["sample0", "sample1", "sample2"]
    assert arrays["tokens"].min() >= 0 and arrays["tokens"].max() < 100


def test_imagenet_samples_refuse_a_non_image_input() -> None:
    with pytest.raises(TrtflowError) as info:
        input_set("tok", [dict(TOKEN_SPEC, data="imagenet_samples")], 2, "validation")
    assert "model 'tok'" in str(info.value)
    assert "input 'tokens' uses data: imagenet_samples, which needs a float 3xHxW input, not int64 [16]" \
        in str(info.value)


def test_imagenet_samples_in_float16() -> None:
    arrays, _ = input_set("net", [dict(IMAGE_SPEC, dtype="float16")], 2, "validation")
    assert arrays["input"].dtype == np.float16


@pytest.mark.parametrize("dtype, low, high", [("int64", 0, 100), ("int32", 0, 100),
                                              ("uint8", 0, 100), ("bool", 0, 2),
                                              ("float32", -1.0, 1.0), ("float16", -1.0, 1.0)])
def test_synthetic_default_ranges_per_dtype(dtype: str, low: float, high: float) -> None:
    spec = {"name": "x", "shape": [64], "dtype": dtype}
    values = synthetic(spec, 50, np.random.default_rng(0))
    assert values.shape == (50, 64) and values.dtype == np.dtype(dtype)
    as_float = values.astype(np.float64)
    assert as_float.min() >= low and as_float.max() < high
    if dtype != "bool":  # spread over the range, not a constant
        assert as_float.max() - as_float.min() > 0.9 * (high - low) - 1
    else:
        assert values.any() and not values.all()


def test_synthetic_honours_the_configured_range() -> None:
    values = synthetic({"name": "x", "shape": [1000], "dtype": "int64", "range": [5, 8]}, 2,
                       np.random.default_rng(0))
    assert set(np.unique(values)) == {5, 6, 7}  # high is exclusive for integers
    floats = synthetic({"name": "x", "shape": [1000], "dtype": "float32", "range": [2, 3]}, 1,
                       np.random.default_rng(0))
    assert floats.min() >= 2 and floats.max() < 3


def test_load_photo_gives_rgb_floats_in_unit_range() -> None:
    for name in ("chelsea", "camera"):  # colour and greyscale
        image = load_photo(name)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.5
    camera = load_photo("camera")
    np.testing.assert_array_equal(camera[..., 0], camera[..., 2])


def test_center_crop_and_random_crop_sizes() -> None:
    image = load_photo("coffee")  # 400 x 600
    assert center_crop(image, 32, 48).shape == (32, 48, 3)
    assert center_crop(image, 224, 224).shape == (224, 224, 3)
    rng = np.random.default_rng(0)
    crops = [random_crop(image, 24, 24, rng) for _ in range(3)]
    assert all(c.shape == (24, 24, 3) for c in crops)
    assert not np.allclose(crops[0], crops[1])


def test_center_crop_keeps_the_centre_of_the_image() -> None:
    image = np.zeros((100, 100, 3), dtype=np.float32)
    image[40:60, 40:60] = 1.0  # a bright square in the middle
    crop = center_crop(image, 50, 50)
    assert crop[25, 25].min() > 0.99 and crop[0, 0].max() < 0.01


def test_normalize_chw_maps_the_mean_colour_to_zero() -> None:
    image = np.broadcast_to(IMAGENET_MEAN, (4, 5, 3)).copy()
    out = normalize_chw(image)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.0, atol=1e-6)
    white = normalize_chw(np.ones((1, 1, 3), dtype=np.float32))[:, 0, 0]
    np.testing.assert_allclose(white, (1 - IMAGENET_MEAN) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-6)


def test_batch_of_repeats_a_short_set() -> None:
    arrays = {"x": np.arange(3)[:, None] * np.ones((3, 2)), "y": np.arange(3)}
    batch = batch_of(arrays, 7)
    np.testing.assert_array_equal(batch["y"], [0, 1, 2, 0, 1, 2, 0])
    assert batch["x"].shape == (7, 2) and batch["x"].flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(batch_of(arrays, 2)["y"], [0, 1])




def test_preprocessing_lets_real_imagenet_weights_recognise_the_photos(mobilenet_checkpoint) -> None:
    """The photos with an ImageNet subject are classified right after our preprocessing."""
    import torch
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None).eval()
    model.load_state_dict(torch.load(mobilenet_checkpoint, map_location="cpu", weights_only=True))
    spec = dict(IMAGE_SPEC, shape=[3, 224, 224])
    arrays, names = input_set("mnet", [spec], 2, "validation")
    with torch.no_grad():
        top1 = model(torch.from_numpy(arrays["input"])).argmax(dim=1).tolist()
    for name, predicted in zip(names, top1):
        assert predicted in EXPECTED_IMAGENET_CLASSES[name][1], (name, predicted)
