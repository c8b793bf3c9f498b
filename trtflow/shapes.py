"""Synthetic "shapes" scenes, and training the built-in detectors on them.

No trained COCO checkpoint of Mask R-CNN, Keypoint R-CNN or RT-DETR can be fetched here (none
is on PyPI, the only index we reach), and randomly initialised detectors are no test of an fp16 or
int8 engine: their scores hover around one value, so any rounding reorders the detections. A
detector trained for a few minutes on these scenes gives what a trained checkpoint gives:
confident, well-separated detections, sharp masks and single-peaked keypoint heatmaps.

The scenes themselves (boxes, classes, masks, keypoints) are `trtflow.scenes`.

    python -m trtflow.shapes --architecture maskrcnn_r50_fpn --size 512 --steps 1500 \
        --output checkpoints/maskrcnn_shapes.pt

The checkpoint is the detector's own state_dict (torchvision or transformers keys), the form a
user's checkpoint has; `weights: {path: ...}` loads it into the deploy module.

Classifiers train on the same scenes: the class of a scene is the shape class of its largest
object, and the network gets `num_classes: 3`. No ImageNet checkpoint of most torchvision
classifiers can be fetched here either, and a random classifier's logits are no test of an int8
engine (random BatchNorm statistics make the activations of a deep network degenerate):

    python -m trtflow.shapes --architecture torchvision.models:efficientnet_v2_s --size 128 \
        --batch 64 --max-seconds 330 --evaluate-size 128 --output checkpoints/efficientnet_v2_s_shapes.pt

and in config: `architecture_kwargs: {num_classes: 3}`, `weights: {path: ...}`, `data: shapes`.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from .errors import TrtflowError
from .io import atomic_path
from .scenes import SHAPE_CLASSES, Scene, boundary_keypoints, render_scene, scene_images  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

# --- training ------------------------------------------------------------------------------
# the built-in detectors this module can train (each inside a deploy module); any other
# architecture is trained as a classifier, if it is one (see _classifier_check)
DETECTORS = ("maskrcnn_r50_fpn", "keypointrcnn_r50_fpn", "rtdetr_r18")


def scene_class(scene: Scene) -> int:
    """A scene's class for classifiers: the 0-based shape class of its largest object."""
    return int(scene.labels[int(np.argmax(scene.masks.reshape(len(scene.labels), -1).sum(axis=1)))] - 1)


def target_labels(architecture: str, labels: np.ndarray) -> np.ndarray:
    """The class ids each architecture learns: Mask R-CNN the shape classes (1-3), Keypoint
    R-CNN its one foreground class (1: every shape is an "object"), RT-DETR 0-based ids (0-2)."""
    if architecture == "keypointrcnn_r50_fpn":
        return np.ones_like(labels)
    return labels - 1 if architecture == "rtdetr_r18" else labels


def _rcnn_targets(scenes: Sequence[Scene], architecture: str, device: Any) -> List[Dict[str, Any]]:
    import torch

    targets = []
    for scene in scenes:
        target = {"boxes": torch.from_numpy(scene.boxes).to(device),
                  "labels": torch.from_numpy(target_labels(architecture, scene.labels)).to(device)}
        if architecture == "maskrcnn_r50_fpn":
            target["masks"] = torch.from_numpy(scene.masks).to(device)
        else:
            target["keypoints"] = torch.from_numpy(scene.keypoints).to(device)
        targets.append(target)
    return targets


def _rtdetr_targets(scenes: Sequence[Scene], device: Any) -> List[Dict[str, Any]]:
    """transformers' RT-DETR labels: 0-based classes, boxes as normalised cx, cy, w, h."""
    import torch

    targets = []
    for scene in scenes:
        height, width = scene.image.shape[:2]
        x0, y0, x1, y1 = scene.boxes.T
        boxes = np.stack([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height,
                          (x1 - x0) / width, (y1 - y0) / height], axis=1).astype(np.float32)
        targets.append({"class_labels": torch.from_numpy(target_labels("rtdetr_r18", scene.labels)).to(device),
                        "boxes": torch.from_numpy(boxes).to(device)})
    return targets


def _classifier_check(architecture: str, module, size: int) -> None:
    """Refuse an architecture that is neither a built-in detector nor a classifier: one that does
    not map a batch of images to one logit per shape class."""
    import torch

    with torch.no_grad():
        out = module.eval()(torch.zeros(2, 3, size, size))
    if not (isinstance(out, torch.Tensor) and tuple(out.shape) == (2, len(SHAPE_CLASSES))):
        raise TrtflowError(f"cannot train '{architecture}' on shapes scenes: it is not a classifier "
                           f"(images in, {len(SHAPE_CLASSES)} logits out with num_classes="
                           f"{len(SHAPE_CLASSES)})",
                           fix=f"use one of {', '.join(DETECTORS)} or a classifier factory such as "
                               "torchvision.models:efficientnet_v2_s")


def _zero_classifier_head(classifier) -> None:
    """Zero the last Linear layer (the class head). Factories scale its initial weights by the
    class count they were designed for: torchvision's EfficientNet draws them from
    U(+-1/sqrt(num_classes)), which for 3 classes instead of 1000 gives logits in the tens, and a
    training that never leaves chance. A zero head starts at uniform probabilities."""
    import torch

    heads = [m for m in classifier.modules() if isinstance(m, torch.nn.Linear)
             and m.out_features == len(SHAPE_CLASSES)]
    if heads:
        torch.nn.init.zeros_(heads[-1].weight)
        if heads[-1].bias is not None:
            torch.nn.init.zeros_(heads[-1].bias)


def trained_module(architecture: str, deploy):
    """The module training updates and the checkpoint holds: a detector inside its deploy
    module, or the classifier itself."""
    return deploy.detector if architecture in DETECTORS else deploy


def _loss_function(architecture: str, deploy) -> Callable[[Any, Sequence[Scene]], Any]:
    """(images tensor, scenes) -> scalar training loss of the deploy module's network."""
    import torch

    if architecture not in DETECTORS:
        return lambda images, scenes: torch.nn.functional.cross_entropy(
            deploy(images), torch.tensor([scene_class(s) for s in scenes], device=images.device))
    detector = deploy.detector
    if architecture == "rtdetr_r18":
        return lambda images, scenes: detector(pixel_values=images,
                                               labels=_rtdetr_targets(scenes, images.device)).loss

    def rcnn_loss(images, scenes):
        losses = detector(list(images), _rcnn_targets(scenes, architecture, images.device))
        return sum(losses.values())

    return rcnn_loss


def deploy_spec(architecture: str, size: int) -> Dict[str, Any]:
    """The config entry of a network taking square images of `size`: what trtflow.models builds
    its deploy module from (the R-CNN adapter fixes its input size)."""
    from .detection import DETECTION_OUTPUTS

    inputs = [{"name": "images", "shape": [3, size, size], "dtype": "float32", "data": "shapes"}]
    if architecture not in DETECTORS:
        return {"architecture": architecture, "architecture_kwargs": {"num_classes": len(SHAPE_CLASSES)},
                "inputs": inputs, "outputs": ["logits"]}
    extra: List[str] = {"maskrcnn_r50_fpn": ["masks"],
                        "keypointrcnn_r50_fpn": ["keypoints", "keypoints_scores"]}.get(architecture, [])
    if architecture == "rtdetr_r18":
        inputs.append({"name": "orig_target_sizes", "shape": [2], "dtype": "int32"})
    return {"architecture": architecture, "inputs": inputs, "outputs": [*DETECTION_OUTPUTS, *extra]}


def _identity(batch: Any) -> Any:
    return batch


def scene_batches(size: int, batch: int, seed: int, workers: int) -> Iterator[List[Scene]]:
    """Endless batches of training scenes, rendered by `workers` processes (rendering on the
    training process would leave the GPU waiting); seeded per worker, so runs repeat."""
    import torch

    class Batches(torch.utils.data.IterableDataset):
        def __iter__(self) -> Iterator[List[Scene]]:
            worker = torch.utils.data.get_worker_info()
            rng = np.random.default_rng([seed, 2, worker.id if worker else 0])
            while True:
                yield [render_scene(rng, size, size) for _ in range(batch)]

    return iter(torch.utils.data.DataLoader(Batches(), batch_size=None, num_workers=workers,
                                            collate_fn=_identity))


def train(architecture: str, output: Path, size: int = 512, steps: int = 1500, batch: int = 8,
          learning_rate: Optional[float] = None, seed: int = 0, device: str = "cuda",
          workers: int = 8, max_seconds: Optional[float] = None,
          log_every: int = 50) -> Dict[str, Any]:
    """Train a built-in detector, or a classifier, on shapes scenes; save the network's
    state_dict atomically.

    max_seconds stops early (what was trained is saved, and the result says so): a GPU session
    has a fixed time."""
    import torch

    from .models import build_model

    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = True  # training precision is not under test here
    deploy = build_model(architecture, deploy_spec(architecture, size))
    if architecture not in DETECTORS:
        _classifier_check(architecture, deploy, size)
        _zero_classifier_head(deploy)
    deploy = deploy.to(device)
    network = trained_module(architecture, deploy).train()
    loss_of = _loss_function(architecture, deploy)
    # the R-CNNs take SGD; RT-DETR and classifiers (from scratch, with BatchNorm) AdamW
    sgd = architecture in ("maskrcnn_r50_fpn", "keypointrcnn_r50_fpn")
    base_lr = learning_rate or (0.02 if sgd else 2e-4 if architecture == "rtdetr_r18" else 1e-3)
    parameters = [p for p in network.parameters() if p.requires_grad]
    optimizer = (torch.optim.SGD(parameters, lr=base_lr, momentum=0.9, weight_decay=1e-4) if sgd
                 else torch.optim.AdamW(parameters, lr=base_lr, weight_decay=1e-4))
    warmup = max(1, min(200, steps // 10))
    # seed stream 2: neither the validation (0) nor the calibration (1) scenes
    batches = scene_batches(size, batch, seed, workers)
    started, recent, done, last_loss = time.time(), [], 0, float("nan")
    for step in range(steps):
        if max_seconds and time.time() - started > max_seconds:
            log.warning("train %s: stopping at step %d of %d after %.0f s (max_seconds)",
                        architecture, step, steps, time.time() - started)
            break
        # warm-up, then cosine decay over the steps or the time budget, whichever runs out first
        progress = max(step / steps, (time.time() - started) / max_seconds if max_seconds else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = base_lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        scenes = next(batches)
        images = torch.from_numpy(np.stack([s.image.transpose(2, 0, 1) for s in scenes])).to(device)
        loss = loss_of(images, scenes)
        if not torch.isfinite(loss):
            raise TrtflowError(f"training {architecture} diverged at step {step} (loss {float(loss)})",
                               fix="lower --learning-rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 10.0)
        optimizer.step()
        recent.append(float(loss.detach()))
        done, last_loss = step + 1, recent[-1]
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log.info("train %s: step %d/%d, loss %.4f (mean of last %d), %.1f s", architecture,
                     step + 1, steps, float(np.mean(recent)), len(recent), time.time() - started)
            recent = []
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    with atomic_path(output) as tmp:
        torch.save(state, tmp)
    return {"architecture": architecture, "steps": done, "planned_steps": steps, "size": size,
            "batch": batch, "final_loss": round(last_loss, 4),
            "seconds": round(time.time() - started, 1), "output": str(output)}


def evaluate(architecture: str, checkpoint: Path, size: int, count: int = 8, seed: int = 0,
             device: str = "cuda", min_score: float = 0.5) -> Dict[str, float]:
    """The checkpoint's deploy module at `size` vs the ground truth of `count` scenes it was not
    trained on: a detector's recall and precision at IoU 0.5, same class; a classifier's
    accuracy (on 8x as many scenes: one answer per scene)."""
    import torch

    from .models import load_trained_model
    from .validate import match_detections

    deploy = load_trained_model(architecture, deploy_spec(architecture, size), str(checkpoint)).to(device)
    rng = np.random.default_rng([seed, 3])  # held-out stream: not training, validation, calibration
    if architecture not in DETECTORS:
        return _classifier_accuracy(deploy, rng, size, count * 8, device)
    predicted, truth = [], []
    for _ in range(count):
        scene = render_scene(rng, size, size)
        image = torch.from_numpy(scene.image.transpose(2, 0, 1))[None].to(device)
        with torch.no_grad():
            if architecture == "rtdetr_r18":
                out = deploy(image, torch.tensor([[size, size]], dtype=torch.int32, device=device))
            else:
                out = deploy(image)
        predicted.append([t[0].cpu().numpy() for t in out[:3]])
        labels = target_labels(architecture, scene.labels)
        truth.append([labels, scene.boxes, np.ones(len(labels), np.float32)])
    rows = max(len(p[0]) for p in predicted + truth)

    def stacked(sets: List[List[np.ndarray]]) -> List[np.ndarray]:
        """Per-image detections padded to one row count (score 0 rows are never confident)."""
        padded = [[np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), a.dtype)]) for a in s]
                  for s in sets]
        return [np.stack([p[i] for p in padded]) for i in range(3)]

    # against ground truth a detection below min_score is missing: no band below the threshold
    metrics, _ = match_detections(stacked(predicted), stacked(truth), min_score=min_score,
                                  match_fraction=1.0)
    return {"scenes": count, "objects": metrics["reference_detections"],
            "detections": metrics["engine_detections"], "recall": metrics["detection_recall"],
            "precision": metrics["detection_precision"], "box_iou": metrics["matched_box_iou"]}


def _classifier_accuracy(classifier, rng: np.random.Generator, size: int, count: int,
                         device: str) -> Dict[str, float]:
    import torch

    scenes = [render_scene(rng, size, size) for _ in range(count)]
    images = torch.from_numpy(np.stack([s.image.transpose(2, 0, 1) for s in scenes])).to(device)
    with torch.no_grad():
        logits = torch.cat([classifier(chunk) for chunk in images.split(16)])
    truth = np.array([scene_class(s) for s in scenes])
    predicted = logits.argmax(dim=1).cpu().numpy()
    top = torch.softmax(logits, dim=1).max(dim=1).values.cpu().numpy()
    return {"scenes": count, "accuracy": float((predicted == truth).mean()),
            "median_top_probability": float(np.median(top))}


def main(argv: Optional[Sequence[str]] = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", required=True,
                        help=f"one of {', '.join(DETECTORS)}, or a classifier factory "
                             "(module:function taking num_classes)")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--size", type=int, default=512, help="square training image side")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=8, help="processes rendering scenes")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop early and save")
    parser.add_argument("--evaluate-size", type=int, default=None,
                        help="then report recall/precision (accuracy) on held-out scenes of this size")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(train(args.architecture, args.output, args.size, args.steps, args.batch,
                args.learning_rate, args.seed, args.device, args.workers, args.max_seconds))
    if args.evaluate_size:
        print(evaluate(args.architecture, args.output, args.evaluate_size, seed=args.seed,
                       device=args.device))


if __name__ == "__main__":
    main()
