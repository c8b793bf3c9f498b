"""Random weights whose outputs say something about their input (issue 22 item 2).

A network initialised by its own code, with no training, often gives outputs that a validation
cannot learn from: logits of 1e-9 (torchvision's MobileNets), far below float16's smallest normal
number, or one class for every image because one bias outweighs what the image changes
(ResNet-18, RegNet), or outputs equal to 4e-5 relative whatever the input (ShuffleNetV2: its
BatchNorm statistics are the defaults, not the data's). Where the outputs on sample inputs show
one of these (what_is_needed), two fixes, both recorded in the weights JSON; a model whose outputs
already follow their input keeps its own initialisation (a user's design, such as the debug
tests' EdgeCNN, is not rescaled behind their back):
1. Each batch norm given one scale for its whole layer, the size of what it sees on sample
   inputs (mean 0), so that activations keep unit size at every depth instead of fading to 1e-9.
   Not per channel and centred, as the detectors' initialisation (trtflow.detection) does: that
   magnifies whatever differs a little from a channel's mean, which makes a random network
   chaotic (its fp16 error 1-10 % in place of 0.2-0.5 %: ResNet-18, MobileNetV2, ShuffleNetV2,
   RegNet, DeepLabV3; tests/test_random_init.py checks the fp16 error).
2. The output layer (the last Linear/Conv the forward pass calls) rescaled and re-centred, so that
   each output channel has mean 0 and unit spread over the samples: the outputs then differ from
   sample to sample by far more than fp16 or int8 rounding, and the argmax follows the input, not
   a bias. It is kept only if the model's output is an affine image of that layer's (a bilinear
   upsampling after it is); otherwise it is undone and the record says why.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

# the output layer's spread over the samples after rescaling: far above fp16 rounding (1e-3
# relative), small enough that a softmax is not saturated
TARGET_SPREAD = 1.0
# how closely the model's output must follow the affine change of its output layer
AFFINE_TOLERANCE = 1e-3


def first_tensor(value: Any):
    """The first floating-point tensor of a model's output (a tensor, tuple, list or dict)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else None
    items = value.values() if isinstance(value, Mapping) else value
    if isinstance(items, (list, tuple)) or isinstance(value, Mapping):
        for item in items:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def output_statistics(output, classification: bool) -> Dict[str, Any]:
    """rms, spread across samples relative to the rms, and (classification) how many classes
    are the argmax of some sample."""
    values = output.detach().double()
    deviation = values - values.mean(dim=0, keepdim=True)
    rms = float(values.pow(2).mean().sqrt())
    stats = {"rms": rms, "relative_spread": float(deviation.pow(2).mean().sqrt()) / rms if rms else 0.0}
    if classification and values.dim() == 2:
        stats["distinct_argmax"] = int(values.argmax(dim=1).unique().numel())
    return stats


def normalise_batch_norms(module: Any, run: Callable[[], Any], centre: bool = True) -> int:
    """Set each batch norm's statistics to what it sees on the sample images (in order, in one
    pass: a pre-hook updates a layer just before it normalises), so activations keep unit scale
    through a random backbone instead of fading towards zero. With centre=False the mean stays
    0 and the variance is the second moment: the scale is fixed, but a layer whose inputs differ
    little from their mean is not magnified to unit spread, which would magnify fp16's rounding
    with it (a random DeepLabV3's fp16 error went from 0.1 % to 10 % that way)."""
    import torch
    from torchvision.ops import FrozenBatchNorm2d

    def measure(layer, inputs):
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        if centre:
            variance = x.var(dims)
            layer.running_mean.copy_(x.mean(dims))
        else:  # one scale for the whole layer: its channels keep their relative sizes
            variance = x.pow(2).mean().expand_as(layer.running_var)
            layer.running_mean.zero_()
        # a channel that barely varies (a dead one) stays near zero instead of having its
        # rounding noise scaled up to unit size, which fp16 engines would then disagree on
        layer.running_var.copy_(variance.clamp(min=float(variance.mean()) * 1e-2))

    norms = [m for m in module.modules()
             if isinstance(m, (FrozenBatchNorm2d, torch.nn.modules.batchnorm._BatchNorm))]
    run_with_hooks([layer.register_forward_pre_hook(measure) for layer in norms], run)
    return len(norms)


def run_with_hooks(hooks: Sequence[Any], run: Callable[[], Any]) -> None:
    """One pass of `run` without gradients, the (already registered) hooks removed after it."""
    import torch

    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()


def last_output_layer(module, run) -> Tuple[Optional[str], Any]:
    """(name, output) of the last Linear/Conv module that the forward pass calls."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    calls: List[Tuple[str, Any]] = []
    run_with_hooks([layer.register_forward_hook(
        lambda _m, _i, out, name=name: calls.append((name, out)))
        for name, layer in module.named_modules() if isinstance(layer, kinds)], run)
    return calls[-1] if calls else (None, None)


def channel_axis(layer) -> int:
    import torch

    return -1 if isinstance(layer, torch.nn.Linear) else 1


def recentre_output_layer(module, run, name: str, head_output) -> Dict[str, Any]:
    """Rescale and re-centre `name` (see the module docstring); undone unless the model's output
    follows. Returns what was done."""
    import torch

    layer = module.get_submodule(name)
    axis = channel_axis(layer)
    values = head_output.detach().double().movedim(axis, -1)
    flat = values.reshape(-1, values.shape[-1])
    mean = flat.mean(dim=0)
    spread = float((flat - mean).pow(2).mean().sqrt())
    if spread == 0.0:
        return {"layer": name, "adjusted": False, "why": "the layer's output does not vary"}
    scale = TARGET_SPREAD / spread
    with torch.no_grad():
        before = first_tensor(run()).detach().double()
        saved = (layer.weight.detach().clone(),
                 layer.bias.detach().clone() if layer.bias is not None else None)
        layer.weight.mul_(scale)
        if layer.bias is not None:
            layer.bias.copy_((layer.bias.double() - mean).mul(scale).to(layer.bias.dtype))
        after = first_tensor(run()).detach().double()
    centre = mean if layer.bias is not None else torch.zeros_like(mean)
    expected = None
    if before.shape == after.shape and before.dim() >= 2 and before.shape[1 if axis == 1 else -1] == mean.numel():
        shape = [1] * before.dim()
        shape[axis] = mean.numel()
        expected = (before - centre.reshape(shape)) * scale
    error = (float((after - expected).abs().max() / (expected.abs().max() + 1e-30))
             if expected is not None else None)
    if error is None or error > AFFINE_TOLERANCE:
        with torch.no_grad():
            layer.weight.copy_(saved[0])
            if saved[1] is not None:
                layer.bias.copy_(saved[1])
        return {"layer": name, "adjusted": False,
                "why": "the model's output is not an affine image of this layer's output "
                       "(an activation or a parameter after it)"}
    return {"layer": name, "adjusted": True, "scale": scale, "centred": layer.bias is not None}


# outputs that need no fix: far from fp16's subnormals and overflow, varying with the input by
# far more than fp16 or int8 rounding, and (classification) not one class for every sample
RMS_RANGE = (1e-2, 1e3)
MIN_RELATIVE_SPREAD = 0.1
MIN_DISTINCT_ARGMAX = 2


def what_is_needed(stats: Mapping[str, Any]) -> List[str]:
    """Why outputs with these statistics say too little about their input (empty: nothing)."""
    reasons = []
    if not RMS_RANGE[0] <= stats["rms"] <= RMS_RANGE[1]:
        reasons.append(f"rms {stats['rms']:.3g} outside {RMS_RANGE[0]:g}-{RMS_RANGE[1]:g}")
    if stats["relative_spread"] < MIN_RELATIVE_SPREAD:
        reasons.append(f"outputs {stats['relative_spread']:.3g} apart relative to their size "
                       f"(< {MIN_RELATIVE_SPREAD:g})")
    if stats.get("distinct_argmax", MIN_DISTINCT_ARGMAX) < MIN_DISTINCT_ARGMAX:
        reasons.append("one class for every sample")
    return reasons


def make_informative(module, feed: Sequence[Any], task: str) -> Dict[str, Any]:
    """Apply both fixes to a freshly initialised `module` on the sample inputs `feed` (tensors in
    the model's input order) when its outputs need them (what_is_needed); a module whose outputs
    already follow their input keeps its initialisation. Returns what was done and why, with the
    output statistics before and after."""
    classification = task == "classification"

    def run():
        return module(*feed)

    import torch

    module.eval()
    with torch.no_grad():
        before = output_statistics(first_tensor(run()), classification)
    record: Dict[str, Any] = {"before": before, "needed": what_is_needed(before)}
    if not record["needed"]:
        record.update(batch_norms=0, after=before,
                      output_layer={"adjusted": False, "why": "its outputs already follow the input"})
        log.info("weights: random initialisation kept as it is: %s", summary_line(record))
        return record
    record["batch_norms"] = normalise_batch_norms(module, run, centre=False)
    name, head_output = last_output_layer(module, run)
    record["output_layer"] = (recentre_output_layer(module, run, name, head_output)
                              if name is not None and first_tensor(head_output) is not None
                              else {"adjusted": False, "why": "no Linear/Conv layer"})
    with torch.no_grad():
        record["after"] = output_statistics(first_tensor(run()), classification)
    log.info("weights: random initialisation made informative (%s): %s",
             "; ".join(record["needed"]), summary_line(record))
    return record


def summary_line(record: Mapping[str, Any]) -> str:
    def stats(s: Mapping[str, Any]) -> str:
        text = f"rms {s['rms']:.3g}, spread {s['relative_spread']:.3g}"
        return text + (f", {s['distinct_argmax']} distinct argmax" if "distinct_argmax" in s else "")

    layer = record["output_layer"]
    done = (f"{layer['layer']} x{layer['scale']:.3g}{' and re-centred' if layer['centred'] else ''}"
            if layer.get("adjusted") else f"output layer unchanged ({layer.get('why')})")
    return (f"{record['batch_norms']} batch norm(s) scaled to the samples, {done}; "
            f"outputs {stats(record['before'])} -> {stats(record['after'])}")
