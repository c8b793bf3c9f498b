"""torchvision-style detectors as deployable modules, without user glue code.

A torchvision detector (R-CNN, RetinaNet, FCOS, SSD: anything with a GeneralizedRCNNTransform)
takes a list of images and returns a list of dicts (boxes, labels, scores, and masks or keypoints
where the model has them), resized and with as many rows as it found. An engine needs tensors of
fixed shapes. `deploy` wraps such a detector as trtflow.zoo wraps its built-ins: one image per
call at the configured input size (no resize), the model's own normalisation inside, the dict
entries the config's `outputs` name returned in that order (labels as int32), each padded to
`max_detections` rows by a scatter into zeros, so the graph's output shapes are static. Masks are
each detection's 28 x 28 probabilities in its box, not pasted into the image (as the Detectron2
TensorRT sample deploys them); keypoints are decoded from the heatmap argmax.

`initialise_for_validation` gives a randomly initialised detector (weights: {random: true})
detections that can be validated: torchvision's initialisation leaves the backbone's activations
fading with depth and the classification heads at one score for everything, so the reference has
no confident detection, or only ties that any engine breaks differently.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import TrtflowError
from .random_init import normalise_batch_norms, run_with_hooks

log = logging.getLogger(__name__)

# what every detection output starts with, in the order validation reads them
DETECTION_OUTPUTS = ("labels", "boxes", "scores")
# the detector's attribute capping its detections per image, by family
DETECTION_CAPS = ("detections_per_img", "box_detections_per_img")
# per image, how many detections a randomly initialised detector is calibrated to make with a
# score of at least CONFIDENT: well under the usual max_detections (100), so that the cut-off
# never falls among confident ones, and enough to compare
CALIBRATED_DETECTIONS = 12
CONFIDENT = 0.5
DEFAULT_MAX_DETECTIONS = 100  # config: models.<name>.max_detections (schema default)
ADAPTER = "torchvision-detection"


def is_adapted(module: Any) -> bool:
    """A torchvision detector wrapped by `deploy`."""
    return getattr(module, "adapter", None) == ADAPTER


def is_torchvision_detector(module: Any) -> bool:
    """A torchvision detection model: it has the detection transform (list in, dicts out)."""
    return type(getattr(module, "transform", None)).__name__ == "GeneralizedRCNNTransform"


def output_keys(detector: Any) -> List[str]:
    """The keys of the dicts this detector returns."""
    keys = list(DETECTION_OUTPUTS)
    heads = getattr(detector, "roi_heads", None)
    if heads is not None and heads.has_mask():
        keys.append("masks")
    if heads is not None and heads.has_keypoint():
        keys += ["keypoints", "keypoints_scores"]
    return keys


def deploy(detector: Any, model: str, image_shape: Sequence[int], outputs: Sequence[str],
           max_detections: int):
    """The deploy module around a torchvision detector: images (1 x 3 x H x W, RGB in [0, 1])
    -> the named dict entries, each 1 x max_detections x ... (class built here: no torch at
    import)."""
    import torch

    available = output_keys(detector)
    unknown = [name for name in outputs if name not in available]
    if unknown or list(outputs[:3]) != list(DETECTION_OUTPUTS):
        raise TrtflowError(
            f"outputs {list(outputs)}: this torchvision detector returns {available}", model=model,
            fix=f"set models.{model}.outputs to {available} (labels, boxes and scores first, the "
                "others as needed)")
    for cap in DETECTION_CAPS:  # the detector never returns more rows than the outputs have
        for owner in (detector, getattr(detector, "roi_heads", None)):
            if owner is not None and hasattr(owner, cap):
                setattr(owner, cap, max_detections)
    # the input has the configured size already: torchvision's resize would export as a
    # data-dependent interpolation (and change the boxes' scale)
    detector.transform.resize = lambda image, target=None: (image, target)
    # nothing was resized, so nothing needs scaling back; and each mask stays its head's 28 x 28
    # probabilities in its box: pasting them into image-sized planes would make the output
    # max_detections x H x W and export as a per-detection loop TensorRT cannot build
    detector.transform.postprocess = lambda result, image_sizes, original_sizes: result
    has_keypoints = "keypoints" in available
    rewrites = ["resize off"] + (["masks not pasted"] if "masks" in available else [])
    if has_keypoints:
        rewrites.append("keypoints from the heatmap argmax")
    if batch_ssd_postprocess(detector):
        rewrites.append("SSD post-processing over all classes at once")
    height, width = int(image_shape[-2]), int(image_shape[-1])

    class Deploy(torch.nn.Module):
        static_batch = 1  # one image per call: the graph is traced for one
        adapter = ADAPTER  # weights: {random: true} initialises it for validation
        adapter_rewrites = rewrites  # what the adapter changed, for export.json

        def __init__(self) -> None:
            super().__init__()
            self.detector = detector
            self.outputs = tuple(outputs)
            self.max_detections = max_detections

        def forward(self, images):
            if images.shape[0] != 1 or tuple(images.shape[-2:]) != (height, width):
                raise ValueError(f"this deploy module takes 1 x 3 x {height} x {width} images, "
                                 f"got {list(images.shape)}")
            with heatmap_argmax_keypoints() if has_keypoints else contextlib.nullcontext():
                found = self.detector([images[0]])[0]
            found["labels"] = found["labels"].to(torch.int32)
            if "masks" in found:  # n x 1 x 28 x 28 -> n x 28 x 28
                found["masks"] = found["masks"].flatten(0, 1)
            return tuple(pad_detections(found[name], self.max_detections)
                         for name in self.outputs)

    return Deploy().eval()


def batch_ssd_postprocess(detector: Any) -> bool:
    """An SSD's post-processing with one TopK, one threshold and one NMS over all classes.

    torchvision's loops over the classes (threshold, top-k, per class), which exports unrolled:
    90 TopK and 180 NonZero nodes for COCO, a graph of 1962 nodes where this one has 369 (11 %
    faster on ONNX Runtime, 20 % in PyTorch: benchmarks/cpu/ssd-postprocess.md). Taking the
    top `topk_candidates` anchors of every class in one TopK along the anchors, then the
    threshold, keeps the same candidates (a class's thresholded top-k is the thresholded prefix of
    its top-k). False where the detector is no SSD."""
    from torchvision.models.detection.ssd import SSD

    if not isinstance(detector, SSD):
        return False
    detector.postprocess_detections = _batched_ssd_postprocess.__get__(detector)
    return True


def _batched_ssd_postprocess(self, head_outputs, image_anchors, image_shapes):
    import torch
    import torch.nn.functional as F
    from torchvision.ops import boxes as box_ops

    all_scores = F.softmax(head_outputs["cls_logits"], dim=-1)
    detections = []
    for boxes, scores, anchors, image_shape in zip(head_outputs["bbox_regression"], all_scores,
                                                   image_anchors, image_shapes):
        boxes = box_ops.clip_boxes_to_image(self.box_coder.decode_single(boxes, anchors), image_shape)
        foreground = scores[:, 1:]  # anchors x classes, the background dropped
        top, anchor = foreground.topk(min(self.topk_candidates, foreground.shape[0]), dim=0)
        rank, label = torch.nonzero(top > self.score_thresh, as_tuple=True)
        picked = anchor[rank, label]
        kept_boxes, kept_scores, kept_labels = boxes[picked], top[rank, label], label + 1
        keep = box_ops.batched_nms(kept_boxes, kept_scores, kept_labels, self.nms_thresh)
        keep = keep[: self.detections_per_img]
        detections.append({"boxes": kept_boxes[keep], "scores": kept_scores[keep],
                           "labels": kept_labels[keep]})
    return detections


@contextlib.contextmanager
def heatmap_argmax_keypoints() -> Iterator[None]:
    """Within it, torchvision's Keypoint R-CNN decodes keypoints from the argmax of each 56x56
    heatmap cell, mapped into the box, instead of upsampling every RoI's heatmaps to the box size.

    The upsampling needs a per-RoI size, which exports as an ONNX Loop; TensorRT 8.6's parser
    dies on that Loop (no error, the process ends). The decoded positions differ from
    torchvision's by under one heatmap cell (box size / 56)."""
    from torchvision.models.detection import roi_heads

    def decode(maps, boxes_per_image):
        import torch

        rois = boxes_per_image[0]  # one image: the deploy module's batch is 1
        height, width = int(maps.shape[-2]), int(maps.shape[-1])
        scores, index = maps.flatten(2).max(dim=2)
        # float arithmetic (exact below 2^24): integer floor division and % export with sign
        # corrections (Mod, Xor, Where) that the float path does not need
        flat_index = index.to(torch.float32)
        row_index = torch.floor(flat_index / width)
        row = (row_index + 0.5).to(maps.dtype)
        col = (flat_index - row_index * width + 0.5).to(maps.dtype)
        box_w = (rois[:, 2] - rois[:, 0]).clamp(min=1).unsqueeze(1)
        box_h = (rois[:, 3] - rois[:, 1]).clamp(min=1).unsqueeze(1)
        x = rois[:, 0:1] + col * box_w / width
        y = rois[:, 1:2] + row * box_h / height
        return [torch.stack([x, y, torch.ones_like(x)], dim=2)], [scores]

    original = roi_heads.keypointrcnn_inference
    roi_heads.keypointrcnn_inference = decode
    try:
        yield
    finally:
        roi_heads.keypointrcnn_inference = original


def pad_detections(rows, count: int):
    """n x ... -> 1 x count x ...: the n rows scattered into zeros of the full size, so the
    output's shape is the constant's whatever n is (a pad or slice would leave it
    data-dependent). The trailing dims are fixed by the heads: constants in the graph."""
    import torch

    tail = tuple(int(d) for d in rows.shape[1:])
    index = torch.arange(rows.shape[0], device=rows.device)
    index = index.view(-1, *([1] * len(tail))).expand_as(rows)
    padded = torch.zeros((count, *tail), dtype=rows.dtype, device=rows.device)
    return padded.scatter(0, index, rows).unsqueeze(0)


# --- random initialisation that validation can use ------------------------------------------

def _layer_outputs(layer: Any, run: Callable[[], Any]):
    """What a layer gives on the sample images, flattened."""
    return _captured(layer, run, lambda _inputs, output: output.flatten())


def _layer_inputs(layer: Any, run: Callable[[], Any]):
    """What a Linear layer is given on the sample images: rows x features."""
    return _captured(layer, run, lambda inputs, _output: inputs[0].flatten(1))


def _captured(layer: Any, run: Callable[[], Any], pick: Callable[[Any, Any], Any]):
    import torch

    seen: List[Any] = []
    run_with_hooks([layer.register_forward_hook(lambda _m, inputs, output: seen.append(
        pick(inputs, output).detach()))], run)
    return torch.cat(seen)


def classification_layers(detector: Any) -> List[Tuple[str, Any]]:
    """The layers whose outputs are class (or objectness) logits: RPN objectness, R-CNN box
    classifier, one-stage classification heads; for an SSD, the last convolution of each entry
    of `head.classification_head.module_list` (one per feature map)."""
    found = [(name, layer) for name, layer in detector.named_modules()
             if name.rsplit(".", 1)[-1] in ("cls_logits", "cls_score") and hasattr(layer, "bias")]
    return found or ssd_classification_layers(detector)


def ssd_classification_layers(detector: Any) -> List[Tuple[str, Any]]:
    import torch

    head = getattr(getattr(detector, "head", None), "classification_head", None)
    if head is None or not hasattr(head, "module_list"):
        return []
    prefix = "head.classification_head.module_list"
    layers = []
    for index, entry in enumerate(head.module_list):
        convs = [(f"{prefix}.{index}{'.' + name if name else ''}", conv)
                 for name, conv in entry.named_modules() if isinstance(conv, torch.nn.Conv2d)]
        if convs:
            layers.append(convs[-1])  # SSDlite: depthwise conv, then the classifier
    return layers


def _confident(detections: Sequence[Dict[str, Any]],
               per_image: Callable[[List[int]], float] = lambda counts: sum(counts) / len(counts)
               ) -> float:
    """Detections scoring CONFIDENT or more: the mean over images, or another statistic."""
    return float(per_image([int((d["scores"] >= CONFIDENT).sum()) for d in detections]))


def initialise_for_validation(detector: Any, images: Sequence[Any], seed: int) -> Dict[str, Any]:
    """Random weights with confident, distinct detections on images like `images`.

    1. Batch norms normalise what they see (activations of unit scale at every depth).
    2. Each classification layer gets random weights scaled so its logits spread (std 3):
       distinct scores, no ties for an engine to break differently.
    3. The last classifier is calibrated, by bisection, to about CALIBRATED_DETECTIONS
       detections per image scoring CONFIDENT or more: through its bias (sigmoid heads), or
       through its background class (softmax heads: `_calibrate_softmax`)."""
    import torch

    torch.manual_seed(seed)
    run = lambda: detector(list(images))  # noqa: E731
    norms = normalise_batch_norms(detector, run)
    layers = classification_layers(detector)
    if not layers:
        raise TrtflowError("found no classification layer (cls_logits / cls_score) to initialise",
                           fix="give trained weights (weights: {path: ...})")
    name, last = layers[-1]
    with torch.no_grad():
        sized = _size_boxes(detector, run)
        for _, layer in layers[:-1]:
            _spread(layer, run)
        if name.endswith("cls_score"):  # R-CNN: softmax over classes, class 0 the background
            value = _calibrate_softmax(detector, last, run)
        elif ".module_list." in name:  # SSD: softmax per anchor, class 0 the background
            value = _calibrate_ssd(detector, layers, run)
        else:  # sigmoid heads: one logit per location and class
            value = _calibrate_sigmoid(detector, last, run)
    log.info("random detector initialised for validation: %d batch norms on %d sample images, "
             "classifiers %s, %s calibrated to %.3g", norms, len(images),
             ", ".join(n for n, _ in layers), name, value)
    return {"batch_norms": norms, "classifiers": [n for n, _ in layers], "calibration": value,
            "box_regression": sized, "confident_per_image": _confident(run())}


def _size_boxes(detector: Any, run: Callable[[], Any]) -> List[str]:
    """Box regressions that give a box's sides as multiples of its anchor's size (FCOS's
    `bbox_reg`, through a ReLU) start near zero: every box would be a point, whose IoU with
    itself moves a lot with the smallest coordinate error (fp16). They are set to give sides of
    about one anchor size, varying by +-0.25, as trained ones do."""
    import torch

    sized = []
    for name, layer in detector.named_modules():
        if name.rsplit(".", 1)[-1] == "bbox_reg" and getattr(layer, "bias", None) is not None:
            torch.nn.init.normal_(layer.weight, std=0.01)
            layer.bias.zero_()
            layer.weight.mul_(0.25 / float(_layer_outputs(layer, run).std().clamp(min=1e-12)))
            layer.bias.fill_(1.0)
            sized.append(name)
    return sized


def _spread(layer: Any, run: Callable[[], Any], same_norm_per_output: bool = False) -> None:
    """Random weights whose outputs (logits) have std 3 on the sample images; with
    same_norm_per_output every class's weights have one norm, so that no class outscores the
    others everywhere (the confident detections would crowd into one class and past the
    detector's per-image cap, where the cut among near-equal scores is an engine's to differ)."""
    import torch

    torch.nn.init.normal_(layer.weight, std=0.01)
    torch.nn.init.zeros_(layer.bias)
    if same_norm_per_output:
        rows = layer.weight.flatten(1)
        rows.mul_(rows.norm(dim=1).mean() / rows.norm(dim=1, keepdim=True))
    layer.weight.mul_(3.0 / float(_layer_outputs(layer, run).std().clamp(min=1e-12)))


def _calibrate_softmax(detector: Any, layer: Any, run: Callable[[], Any]) -> float:
    """An R-CNN box classifier that detects distinct regions on every image.

    With random weights the region features all point one way (their mean) and their scale
    differs several-fold between images, so a plain random classifier makes every region of a
    bright image confident and none of a dark one. The classes read what differs between regions
    (their weights orthogonal to the mean feature), the background reads the mean feature, and
    both scale alike with the image: how many regions beat the background is set by the
    background's weight (bisected), about equally on every image."""
    import torch

    heads = detector.roi_heads
    replay = _replayable(heads, "postprocess_detections", run)
    features = _layer_inputs(layer, run)
    per_image = [len(p) for p in replay.calls[0][0][2]]  # proposals per image
    mean = features.mean(0)
    mean = mean / mean.norm().clamp(min=1e-12)
    torch.nn.init.normal_(layer.weight, std=0.01)
    torch.nn.init.zeros_(layer.bias)
    classes = layer.weight[1:]
    classes -= (classes @ mean)[:, None] * mean[None, :]
    smallest = min(float(layer(rows).std()) for rows in features.split(per_image))
    classes *= 3.0 / max(smallest, 1e-12)  # logits spread even on the faintest image
    scale = float(classes.norm(dim=1).mean())
    # only the class logits change: the regions' features and post-processing are replayed
    with_logits = lambda args: (layer(features), *args[1:])  # noqa: E731
    return _calibrate(lambda weight: layer.weight[0].copy_(weight * scale * mean),
                      lambda: _confident(replay(with_logits)), more_with_higher=False,
                      low=0.0, high=1.0)


def _calibrate_ssd(detector: Any, layers: Sequence[Tuple[str, Any]], run: Callable[[], Any]) -> float:
    """An SSD's classifiers (one convolution per feature map, anchors x classes channels) that
    detect distinct places on every image, as `_calibrate_softmax` does for R-CNN's: at every
    location the classes read what differs from the layer's mean input patch, the background
    reads the mean patch itself, so both scale alike with the image; the background's share
    (one for all layers) is bisected, with only the classification head replayed on the
    features it was given and the post-processing after it."""
    head = detector.head.classification_head
    columns = int(head.num_columns)
    replay, with_logits = _head_replay(detector, run)
    made = [_orthogonal_classes(layer, _call_inputs(layer, run), columns) for _, layer in layers]

    def share(value: float) -> None:
        for (_, layer), (mean, scale) in zip(layers, made):
            layer.weight.view(-1, columns, mean.numel())[:, 0] = value * scale * mean

    return _calibrate(share, lambda: _confident(replay(with_logits)), more_with_higher=False,
                      low=0.0, high=1.0)


def _calibrate_sigmoid(detector: Any, layer: Any, run: Callable[[], Any]) -> float:
    """A one-stage sigmoid classifier (RetinaNet, FCOS) with about CALIBRATED_DETECTIONS
    confident detections on every image: the classes read what differs from the mean input patch,
    and the threshold they must pass is a share of the mean patch itself (a negative weight
    along it, bias 0), so that it grows with the image's features as the logits do. A fixed bias
    cannot: a tower's features scale with the photo, and a fixed threshold gave RetinaNet 0
    confident detections on 6 of 8 photos and 100 on another (v2, its GroupNorm tower: 0 to 35).
    Raising the towers' pre-activations instead (most units active) evened the counts but put
    the detections in the same places on every photo, which validation's rolled null then
    matched (FCOS: 68 % of one photo's detections found in the next one's)."""
    replay, with_logits = _head_replay(detector, run)
    mean, scale = _orthogonal_classes(layer, _call_inputs(layer, run), None)
    classes = layer.weight.detach().clone().view(layer.weight.shape[0], -1)

    def threshold(value: float) -> None:
        layer.weight.view(classes.shape).copy_(classes - value * scale * mean[None, :])

    return _calibrate(threshold, lambda: _confident(replay(with_logits)), more_with_higher=False,
                      low=0.0, high=1.0)


def _head_replay(detector: Any, run: Callable[[], Any]) -> Tuple["_Replay", Callable[[tuple], tuple]]:
    """The post-processing replay, and the change to its arguments that recomputes the class
    logits from the features the classification head was given (only the head runs again)."""
    head = detector.head.classification_head
    given: List[Any] = []
    hook = head.register_forward_hook(lambda _m, inputs, _o: given.append(list(inputs[0])))
    try:
        replay = _replayable(detector, "postprocess_detections", run)
    finally:
        hook.remove()

    def with_logits(args: tuple) -> tuple:
        head_outputs, *rest = args
        logits, before = head(given[0]), head_outputs["cls_logits"]
        if isinstance(before, (list, tuple)):  # RetinaNet and FCOS post-process level by level
            logits = list(logits.split([int(level.shape[1]) for level in before], dim=1))
        return ({**head_outputs, "cls_logits": logits}, *rest)

    return replay, with_logits


def _call_inputs(layer: Any, run: Callable[[], Any]) -> List[Any]:
    """The input of each call of `layer` in one run (a tower shared by the pyramid levels is
    called once per level)."""
    seen: List[Any] = []
    run_with_hooks([layer.register_forward_hook(
        lambda _m, inputs, _o: seen.append(inputs[0].detach()))], run)
    return seen


def _orthogonal_classes(layer: Any, inputs: Sequence[Any], columns: Optional[int]
                        ) -> Tuple[Any, float]:
    """Random class weights of the convolution `layer` orthogonal to its mean input patch, spread
    to logits of std 3 on the faintest image, bias 0. With `columns`, class 0 of every group of
    `columns` channels is a background and left at 0. `inputs`: one per call (pyramid levels).
    Returns (the unit mean patch, the class weights' mean norm)."""
    import torch
    import torch.nn.functional as F

    patches = torch.cat([F.unfold(x, layer.kernel_size, dilation=layer.dilation,
                                  padding=layer.padding, stride=layer.stride).transpose(1, 2)
                         for x in inputs], dim=1)  # images x locations x patch
    mean = patches.flatten(0, 1).mean(0)
    mean = mean / mean.norm().clamp(min=1e-12)
    torch.nn.init.normal_(layer.weight, std=0.01)
    torch.nn.init.zeros_(layer.bias)
    rows = layer.weight.view(-1, columns or 1, mean.numel())
    classes = rows[:, 1:] if columns else rows
    classes -= (classes @ mean)[..., None] * mean
    flat = classes.reshape(-1, mean.numel())
    smallest = min(float((image @ flat.T).std()) for image in patches)
    classes *= 3.0 / max(smallest, 1e-12)
    if columns:
        rows[:, 0] = 0.0
    return mean, float(classes.norm(dim=-1).mean())


class _Replay:
    """The calls one run made to a detector's post-processing, to be made again with changed
    arguments: calibrating a classifier then costs post-processing, not whole forward passes
    (minutes for a ResNet-50 R-CNN at 1344 x 1344 on a CPU)."""

    def __init__(self, method: Callable[..., Any], calls: List[Tuple[tuple, dict]]) -> None:
        self.method, self.calls = method, calls

    def __call__(self, change: Callable[[tuple], tuple]) -> List[Dict[str, Any]]:
        import torch

        found: List[Dict[str, Any]] = []
        with torch.no_grad():
            for args, kwargs in self.calls:
                out = self.method(*change(args), **kwargs)
                if isinstance(out, tuple):  # R-CNN's box head: (boxes, scores, labels) lists
                    out = [{"boxes": b, "scores": s, "labels": n} for b, s, n in zip(*out)]
                found += out
        return found


def _replayable(owner: Any, name: str, run: Callable[[], Any]) -> _Replay:
    import torch

    method = getattr(owner, name)
    calls: List[Tuple[tuple, dict]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return method(*args, **kwargs)

    own = name in vars(owner)  # an instance attribute (batch_ssd_postprocess's) stays one
    setattr(owner, name, spy)
    try:
        with torch.no_grad():
            run()
    finally:
        if own:
            setattr(owner, name, method)
        else:
            delattr(owner, name)
    return _Replay(method, calls)


def _calibrate(apply: Callable[[float], Any], count: Callable[[], float],
               more_with_higher: bool, low: float = -20.0, high: float = 20.0,
               steps: int = 12) -> float:
    """Bisect a setting for CALIBRATED_DETECTIONS confident detections per image."""
    for _ in range(steps):
        middle = (low + high) / 2
        apply(middle)
        too_many = count() > CALIBRATED_DETECTIONS
        if too_many == more_with_higher:
            high = middle
        else:
            low = middle
    middle = (low + high) / 2
    apply(middle)
    return middle


def check_trace_finds_detections(module: Any, inputs: Sequence[Any], model: str) -> None:
    """The export traces one run: on an image where the detector finds nothing, torchvision's
    post-processing takes its empty path and the graph has no NMS. Refuse to export that."""
    import torch

    with torch.no_grad():
        scores = module(*inputs)[2]
    if not bool((scores > 0).any()):
        raise TrtflowError(
            "the detector finds nothing on the sample image it is traced with, so the exported "
            "graph would only ever return no detections", model=model,
            fix=f"give models.{model}.inputs[0] data: photos (or shapes) that the weights detect "
                "objects in, or lower the detector's score threshold in architecture_kwargs")
