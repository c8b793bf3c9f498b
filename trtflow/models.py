"""Model architectures: built-in names and user `package.module:factory` entries.

`check_architecture` runs at workflow parse time and imports nothing heavy; everything that builds
a model imports torch lazily.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import os
import re
import sys
import traceback
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping

from . import detection
from .errors import TrtflowError

# name -> "module:factory"; torchvision factories are called with weights=None (weights come from
# the weights stage, never from a hub download).
BUILTIN_ARCHITECTURES: Dict[str, str] = {
    "mobilenet_v2": "torchvision.models:mobilenet_v2",
    "resnet18": "torchvision.models:resnet18",
    "resnet50": "torchvision.models:resnet50",
    "deeplabv3_resnet50": "torchvision.models.segmentation:deeplabv3_resnet50",
    "fcn_resnet50": "torchvision.models.segmentation:fcn_resnet50",
    "rtdetr_r18": "trtflow.zoo:rtdetr_r18",
    # torchvision's versions of the Detectron2 R50-FPN models, adapted like any torchvision detector
    "maskrcnn_r50_fpn": "torchvision.models.detection:maskrcnn_resnet50_fpn",
    "keypointrcnn_r50_fpn": "torchvision.models.detection:keypointrcnn_resnet50_fpn",
}
# factory parameters that ask for pretrained weights (torchvision and timm style)
WEIGHT_ARGUMENTS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")
# the package whose factories are always built without weights: trtflow's weights stage gives
# them theirs (torchvision's default backbone weights would otherwise be downloaded, and a "random"
# model would silently hold an ImageNet backbone)
NO_DOWNLOAD_PACKAGES = ("torchvision.",)
_FACTORY_RE = re.compile(r"\A[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")
# a factory is a function that builds a model: one from the standard library or the interpreter
# itself (os:system, subprocess:call, builtins:exec, pickle:loads, ...) would run what the config
# says, not build anything, so no such module is a factory's
NOT_FACTORY_MODULES = frozenset(sys.stdlib_module_names) | {"__main__"}


def check_architecture(model: str, architecture: str) -> None:
    """Fail early, at parse time, on a name that is neither built in nor `module:factory`, and on
    a factory from the standard library (a config must never run a shell command)."""
    if architecture in BUILTIN_ARCHITECTURES:
        return
    if _FACTORY_RE.match(architecture):
        package = architecture.partition(":")[0].split(".")[0]
        if package in NOT_FACTORY_MODULES:
            raise TrtflowError(
                f"architecture '{architecture}' is a function of Python's standard library "
                f"('{package}'), not a model factory; trtflow never calls those", model=model,
                fix=f"set models.{model}.architecture to a built-in name or to your own "
                    "'package.module:function' that returns a torch.nn.Module")
        return
    close = difflib.get_close_matches(architecture, list(BUILTIN_ARCHITECTURES), n=3)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise TrtflowError(
        f"unknown architecture '{architecture}'", model=model,
        fix=f"{hint}use a built-in name ({', '.join(sorted(BUILTIN_ARCHITECTURES))}) "
            "or your own factory as 'package.module:function'")


def resolve_factory(model: str, architecture: str) -> Callable[..., Any]:
    check_architecture(model, architecture)
    target = BUILTIN_ARCHITECTURES.get(architecture, architecture)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrtflowError(f"cannot import '{module_name}' for architecture '{architecture}': {exc}",
                           model=model,
                           fix="install the package, or put your module on PYTHONPATH") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TrtflowError(f"'{module_name}' has no callable '{attr}'", model=model,
                           fix=f"check the architecture entry '{architecture}'")
    return factory


def no_download_kwargs(factory: Callable[..., Any]) -> Dict[str, Any]:
    """Every weight-asking parameter of a torchvision factory, set off (built-in name or
    `torchvision.models...:factory` alike); other factories' are the user's to set."""
    if not getattr(factory, "__module__", "").startswith(NO_DOWNLOAD_PACKAGES):
        return {}
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {name: (False if name.startswith("pretrained") else None)
            for name in WEIGHT_ARGUMENTS if name in parameters}


def weight_arguments(factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> List[str]:
    """The factory's weight-asking parameters that are neither off by default nor set off."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return []
    return [name for name, parameter in parameters.items() if name in WEIGHT_ARGUMENTS
            and kwargs.get(name, parameter.default) not in (None, False, inspect.Parameter.empty)]


@contextlib.contextmanager
def downloads_refused(model: str, architecture: str, factory: Callable[..., Any],
                      kwargs: Mapping[str, Any]) -> Iterator[None]:
    """Weights come from the weights stage, never from a hub at run time: a factory that asks for
    a download (torch.hub, torchvision's weight enums) stops with the argument that asked."""
    import torch.hub

    asking = weight_arguments(factory, kwargs)

    def refuse(url: str, *args: Any, **kw: Any) -> None:
        names = ", ".join(f"{n}: {'false' if n.startswith('pretrained') else 'null'}"
                          for n in asking) or "its weights arguments off"
        raise TrtflowError(
            f"architecture '{architecture}' asked to download {url} while building the model "
            f"({', '.join(asking) or 'an argument'} asks for pretrained weights); trtflow never "
            "downloads weights at run time", model=model,
            fix=f"set models.{model}.architecture_kwargs: {{{names}}}, and give trained weights "
                "with weights: {path: ...}")

    patches = [(torch.hub, "download_url_to_file"), (torch.hub, "load_state_dict_from_url")]
    api = sys.modules.get("torchvision.models._api")
    if api is not None and hasattr(api, "load_state_dict_from_url"):
        patches.append((api, "load_state_dict_from_url"))
    saved = [(owner, name, getattr(owner, name)) for owner, name in patches]
    for owner, name in patches:
        setattr(owner, name, refuse)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def check_factory_arguments(model: str, architecture: str, factory: Callable[..., Any],
                            kwargs: Mapping[str, Any]) -> None:
    """architecture_kwargs the factory cannot take: named before it is called."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C factory: its call says it
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise TrtflowError(
            f"architecture '{architecture}' cannot be called with architecture_kwargs "
            f"{dict(kwargs)}: {exc}", model=model,
            fix=f"give models.{model}.architecture_kwargs only parameters of "
                f"{getattr(factory, '__name__', architecture)}{signature}") from exc


def call_factory(model: str, architecture: str, factory: Callable[..., Any],
                 kwargs: Mapping[str, Any]):
    """The factory's model; whatever goes wrong in the user's code is one TrtflowError that
    names the line where it went wrong (no traceback: README's one line with a fix)."""
    import torch

    check_factory_arguments(model, architecture, factory, kwargs)
    try:
        module = factory(**kwargs)
    except TrtflowError:
        raise
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise TrtflowError(
            f"architecture '{architecture}' failed while building the model, at "
            f"{frame.filename}:{frame.lineno} in {frame.name}: {type(exc).__name__}: {exc}",
            model=model, fix=f"fix the factory there, or models.{model}.architecture_kwargs") from exc
    if not isinstance(module, torch.nn.Module):
        raise TrtflowError(
            f"architecture '{architecture}' returned {type(module).__name__} "
            f"({str(module)[:80]!r}), not a torch.nn.Module", model=model,
            fix=f"make {getattr(factory, '__name__', architecture)} return the model "
                "(an instance of a torch.nn.Module subclass)")
    return module


def build_model(model: str, spec: Mapping[str, Any]):
    """Instantiate the architecture (no weights loaded, nothing downloaded) in eval mode."""
    factory = resolve_factory(model, spec["architecture"])
    kwargs = {**no_download_kwargs(factory), **(spec.get("architecture_kwargs") or {})}
    with downloads_refused(model, spec["architecture"], factory, kwargs):
        module = call_factory(model, spec["architecture"], factory, kwargs)
    if detection.is_torchvision_detector(module):  # list of dicts out: made deployable here
        module = detection.deploy(module, model, spec["inputs"][0]["shape"], spec["outputs"],
                                  spec.get("max_detections", detection.DEFAULT_MAX_DETECTIONS))
    return module.eval()


def extract_state_dict(checkpoint: Any, model: str, path: str) -> Dict[str, Any]:
    """Accept a bare state_dict or the common wrappers ({'state_dict': ...}, {'model': ...})."""
    import torch

    if isinstance(checkpoint, torch.nn.Module):
        return checkpoint.state_dict()
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = checkpoint.get(key)
            if isinstance(inner, Mapping):
                checkpoint = inner
                break
            if isinstance(inner, torch.nn.Module):
                return inner.state_dict()
        if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return {k.removeprefix("module."): v for k, v in checkpoint.items()}
    raise TrtflowError("checkpoint holds no state_dict (expected a mapping of tensor names to "
                       "tensors)", model=model, path=path,
                       fix="save it with torch.save(model.state_dict(), path)")


def with_wrapper_prefix(own_keys: Iterable[str], state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """The checkpoint with its keys moved under the deploy wrapper when that makes them match.

    The built-in detectors are deploy modules around the framework's model (`detector.`): a
    checkpoint of the bare torchvision / transformers model then loads as it is."""
    own = set(own_keys)
    if set(state_dict) == own or not own:
        return state_dict
    common = os.path.commonprefix([min(own), max(own)]).split(".")[:-1]
    for depth in range(1, len(common) + 1):  # "detector", then "detector.model", ...
        prefix = ".".join(common[:depth]) + "."
        moved = {prefix + k: v for k, v in state_dict.items()}
        if set(moved) == own:
            return moved
    return state_dict


def load_weights(module, state_dict: Mapping[str, Any], model: str, architecture: str,
                 path: str) -> None:
    """load_state_dict(strict) with an error that says what does not match and what to do."""
    own = module.state_dict()
    state_dict = with_wrapper_prefix(own.keys(), state_dict)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            details.append(f"{len(wrong_shape)} of another shape (e.g. {'; '.join(wrong_shape[:2])})")
        raise TrtflowError(
            f"weights do not match architecture '{architecture}': {', '.join(details)}",
            model=model, path=path,
            fix="point weights at a checkpoint of this architecture, or set 'architecture' "
                "(and architecture_kwargs, e.g. num_classes) to the one the checkpoint was saved from")
    module.load_state_dict(state_dict, strict=True)


def load_trained_model(model: str, spec: Mapping[str, Any], weights_path: str):
    """Build the architecture and load the weights stage's state_dict: the reference model."""
    import torch

    from .io import read_artifact

    module = build_model(model, spec)
    state = read_artifact(weights_path, lambda p: torch.load(p, map_location="cpu",
                                                             weights_only=True), "weights file")
    load_weights(module, state, model, spec["architecture"], weights_path)
    return module.eval()


def eval_wrapper(module):
    """The model in eval mode (and kept there), returning a tuple: what export and references run.

    The wrapper class is built inside the function so that importing this module needs no torch."""
    import torch

    class EvalOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner.eval()

        def train(self, mode: bool = True):  # export and inference must never see train mode
            return super().train(False)

        def forward(self, *inputs):
            out = self.inner(*inputs)
            if isinstance(out, Mapping):
                return tuple(out.values())
            return out if isinstance(out, (tuple, list)) else (out,)

    return EvalOnly(module).eval()
