"""Per-input preprocessing of the sample photos (issue 22 item 7): mean and std, the crop's share
of the image, the interpolation.

Each photo input of a model (data: imagenet_samples or photos) ends up with a full `preprocess`
block in the validated config, so calibration, reference, validation and benchmark inputs are
made alike: the user's keys, then for a `timm:create_model` architecture its pretrained config
(timm's own mean/std, crop_pct and interpolation; many timm models take mean 0.5 / std 0.5 or
bicubic resizing), then the data kind's defaults (config/schema.yaml,
definitions.preprocess_defaults).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

log = logging.getLogger(__name__)

PHOTO_KINDS = ("imagenet_samples", "photos")
KEYS = ("mean", "std", "crop_pct", "interpolation")
# skimage's spline orders for the names timm and torchvision use
INTERPOLATION_ORDER = {"nearest": 0, "bilinear": 1, "bicubic": 3}


def kind_defaults() -> Dict[str, Dict[str, Any]]:
    from .schema import load_schema

    return load_schema()["definitions"]["preprocess_defaults"]["default"]


def timm_defaults(entry: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """mean/std/crop_pct/interpolation of a timm:create_model entry's pretrained config (read from
    timm's registry: no model is built and nothing is downloaded), or None for another
    architecture."""
    if entry.get("architecture") != "timm:create_model":
        return None
    name = (entry.get("architecture_kwargs") or {}).get("model_name")
    if not name:
        return None
    try:
        import timm
    except ImportError:
        return None  # the weights stage names the missing package
    config = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    if config is None:
        return None
    found = {"mean": [float(v) for v in config.mean], "std": [float(v) for v in config.std],
             "crop_pct": float(config.crop_pct),
             "interpolation": config.interpolation if config.interpolation in INTERPOLATION_ORDER
             else "bilinear"}
    return found


def resolve_model(entry: Dict[str, Any]) -> None:
    """Fill in the preprocess block of every photo input of one validated model entry."""
    defaults = kind_defaults()
    timm = None
    for spec in entry.get("inputs", []):
        kind = spec.get("data")
        if kind not in PHOTO_KINDS:
            continue
        if kind == "imagenet_samples" and timm is None:
            timm = timm_defaults(entry) or {}
        layers = [defaults[kind], timm if kind == "imagenet_samples" else {},
                  spec.get("preprocess") or {}]
        spec["preprocess"] = {key: next(layer[key] for layer in reversed(layers) if key in layer)
                              for key in KEYS}


def of_spec(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """An input spec's preprocessing: its resolved block, or the data kind's defaults for a spec
    that did not go through the config (library use, tests)."""
    return {**kind_defaults()[spec["data"]], **(spec.get("preprocess") or {})}
