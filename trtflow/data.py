"""Input sets for calibration, validation and benchmarking.

`imagenet_samples` uses the photos that ship inside scikit-image (no download), preprocessed the
way torchvision's ImageNet models expect; `photos` the same crops as RGB in [0, 1] (an input's
`preprocess` block, or a timm model's pretrained config, changes either: trtflow.preprocess); `shapes` renders
the synthetic scenes of `trtflow.scenes` (RGB in [0, 1], for detectors trained on them);
`synthetic` draws seeded random values of the input's dtype. Calibration takes seeded random
crops and flips, validation the standard centre crop, so the two sets differ.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import TrtflowError
from .preprocess import PHOTO_KINDS
from .preprocess import of_spec as preprocess_of

# Photos bundled in the scikit-image wheel (skimage.data needs no network for these).
SAMPLE_PHOTOS: Tuple[str, ...] = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field",
                                  "immunohistochemistry", "camera", "coins", "moon", "retina")
# Photos whose subject is an ImageNet class: a model with real ImageNet weights must say so.
EXPECTED_IMAGENET_CLASSES: Dict[str, Tuple[str, Tuple[int, ...]]] = {
    "chelsea": ("a cat class", (281, 282, 283, 284, 285)),
    "coffee": ("espresso", (967,)),
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32,
                "int64": np.int64, "uint8": np.uint8, "bool": np.bool_}


def load_photo(name: str) -> np.ndarray:
    """An RGB float image in [0, 1], HxWx3."""
    from skimage import data
    from skimage.color import gray2rgb

    image = getattr(data, name)()
    if image.ndim == 2:
        image = gray2rgb(image)
    image = image[..., :3]
    return image.astype(np.float32) / (255.0 if image.dtype != np.float32 else 1.0)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_files(folder: str) -> List["Path"]:
    """The image files under `folder` (searched recursively), sorted; none if it is no folder."""
    from pathlib import Path

    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
        if root.is_dir() else []


def photos_in_folder(folder: str, model: str) -> Dict[str, np.ndarray]:
    """The user's own images (RGB float in [0, 1], by file name), for calibration sets."""
    from pathlib import Path

    from skimage import io
    from skimage.color import gray2rgb

    root = Path(folder)
    files = image_files(folder)
    if not files:
        raise TrtflowError(f"calibration.images: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                           f"'{folder}'", model=model, path=str(root),
                           fix="point calibration.images at a folder of images, or remove it to "
                           "use crops of the built-in sample photos")
    photos = {}
    for path in files:
        try:
            image = io.imread(path)
        except Exception as exc:
            raise TrtflowError(f"calibration.images: cannot read {path}: {exc}", model=model,
                               path=str(path), fix="remove or replace the file") from exc
        image = gray2rgb(image) if image.ndim == 2 else image[..., :3]
        scale = 255.0 if image.dtype == np.uint8 else 65535.0 if image.dtype == np.uint16 else 1.0
        photos[str(path.relative_to(root))] = image.astype(np.float32) / scale
    return photos


def _resize(image: np.ndarray, height: int, width: int, interpolation: str = "bilinear"
            ) -> np.ndarray:
    from skimage.transform import resize

    from .preprocess import INTERPOLATION_ORDER

    return resize(image, (height, width), order=INTERPOLATION_ORDER[interpolation],
                  anti_aliasing=True, preserve_range=True)


def center_crop(image: np.ndarray, height: int, width: int, crop_pct: float = 0.875,
                interpolation: str = "bilinear") -> np.ndarray:
    """The evaluation transform of torchvision and timm: resize so that the crop is `crop_pct`
    of the short side (torchvision's 224 of 256: 0.875), crop the centre."""
    scale = max(height / image.shape[0], width / image.shape[1]) / crop_pct
    resized = _resize(image, max(height, round(image.shape[0] * scale)),
                      max(width, round(image.shape[1] * scale)), interpolation)
    top = (resized.shape[0] - height) // 2
    left = (resized.shape[1] - width) // 2
    return resized[top:top + height, left:left + width]


def random_crop(image: np.ndarray, height: int, width: int, rng: np.random.Generator,
                interpolation: str = "bilinear") -> np.ndarray:
    """A random-resized crop (scale 0.35-1 of the area) with a random horizontal flip."""
    area = image.shape[0] * image.shape[1] * rng.uniform(0.35, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_h = int(min(image.shape[0], round(np.sqrt(area / aspect))))
    crop_w = int(min(image.shape[1], round(np.sqrt(area * aspect))))
    top = int(rng.integers(0, image.shape[0] - crop_h + 1))
    left = int(rng.integers(0, image.shape[1] - crop_w + 1))
    patch = _resize(image[top:top + crop_h, left:left + crop_w], height, width, interpolation)
    return patch[:, ::-1] if rng.random() < 0.5 else patch


def normalize_chw(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """HxWx3 RGB in [0, 1] (resizing's overshoot clipped) -> 3xHxW, (x - mean) / std."""
    mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    return ((np.clip(image, 0.0, 1.0) - mean) / std).transpose(2, 0, 1).astype(np.float32)


def _image_shape(spec: Mapping[str, Any], model: str) -> Tuple[int, int]:
    shape = list(spec["shape"])
    if len(shape) != 3 or shape[0] != 3 or spec["dtype"] not in ("float32", "float16"):
        raise TrtflowError(
            f"input '{spec['name']}' uses data: {spec['data']}, which needs a float 3xHxW "
            f"input, not {spec['dtype']} {shape}", model=model,
            fix="set data: synthetic for this input, or fix its shape/dtype")
    return shape[1], shape[2]


def synthetic(spec: Mapping[str, Any], count: int, rng: np.random.Generator) -> np.ndarray:
    dtype = NUMPY_DTYPES[spec["dtype"]]
    shape = (count, *spec["shape"])
    low, high = spec.get("range") or ((0, 2) if dtype is np.bool_ else (0, 100) if
                                      np.issubdtype(dtype, np.integer) else (-1.0, 1.0))
    if np.issubdtype(dtype, np.floating):
        return rng.uniform(low, high, size=shape).astype(dtype)
    return rng.integers(int(low), int(high), size=shape).astype(dtype)


def input_set(model: str, specs: Sequence[Mapping[str, Any]], count: int, purpose: str,
              seed: int = 0, photos: Optional[Mapping[str, np.ndarray]] = None
              ) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """`count` samples for every input, and a name for each sample.

    purpose: 'validation' (centre crops of the photos, then flipped copies) or 'calibration'
    (random crops). Synthetic inputs are seeded by purpose so the two sets never coincide.
    photos: the images photo inputs are made from (name -> RGB in [0, 1]); default: the sample
    photos.
    """
    rng = np.random.default_rng([seed, 0 if purpose == "validation" else 1])
    arrays: Dict[str, np.ndarray] = {}
    names = [f"sample{i}" for i in range(count)]
    for spec in specs:
        if spec.get("data") in PHOTO_KINDS:
            height, width = _image_shape(spec, model)
            steps = preprocess_of(spec)
            source = photos or {name: load_photo(name) for name in SAMPLE_PHOTOS}
            order = list(source)
            images = []
            for index in range(count):
                name = order[index % len(order)]
                if purpose == "validation":
                    crop = center_crop(source[name], height, width, steps["crop_pct"],
                                       steps["interpolation"])
                    flipped = (index // len(order)) % 2 == 1
                    images.append(crop[:, ::-1] if flipped else crop)
                    names[index] = name + ("_flipped" if flipped else "")
                else:
                    images.append(random_crop(source[name], height, width, rng,
                                              steps["interpolation"]))
                    names[index] = f"{name}_crop{index}"
            arrays[spec["name"]] = np.stack(
                [normalize_chw(i, steps["mean"], steps["std"]) for i in images]).astype(
                NUMPY_DTYPES[spec["dtype"]])
        elif spec.get("data") == "shapes":
            from .scenes import scene_images

            height, width = _image_shape(spec, model)
            stream = (seed, 0 if purpose == "validation" else 1)
            arrays[spec["name"]] = scene_images(count, height, width, stream).astype(
                NUMPY_DTYPES[spec["dtype"]])
            names = [f"shapes{i}" for i in range(count)]
        else:
            arrays[spec["name"]] = synthetic(spec, count, rng)
    return arrays, names


def batch_of(arrays: Mapping[str, np.ndarray], batch: int) -> Dict[str, np.ndarray]:
    """The first `batch` samples of every input, repeating the set if it is shorter."""
    out = {}
    for name, array in arrays.items():
        reps = -(-batch // array.shape[0])
        out[name] = np.ascontiguousarray(np.concatenate([array] * reps)[:batch])
    return out
