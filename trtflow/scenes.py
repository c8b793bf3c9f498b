"""Synthetic "shapes" scenes: the `data: shapes` input kind, and the annotated scenes
`trtflow.shapes` trains the built-in detectors and classifiers on.

A scene is a smooth two-colour background with solid rectangles, ellipses and triangles that do
not overlap. Every object has a box, a class (1 rectangle, 2 ellipse, 3 triangle), a mask and K
keypoints: keypoint k is where the ray from the object's centre at angle 2*pi*k/K (image axes,
counter-clockwise from +x) leaves the shape, so each keypoint has one identity whatever the
shape's rotation.

Its own module (numpy and scikit-image only) so that `trtflow.data` can render scenes without
importing the training code, which imports validation, which imports data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

SHAPE_CLASSES: Tuple[str, ...] = ("rectangle", "ellipse", "triangle")  # labels 1, 2, 3
OBJECT_SIDE_PX = (48, 280)   # object sizes in pixels, whatever the image size (FPN anchors 32-512)
MIN_CONTRAST = 0.35          # colour distance between an object and the background under it


@dataclass
class Scene:
    image: np.ndarray       # H x W x 3 float32 RGB in [0, 1]
    boxes: np.ndarray       # N x 4 float32 xyxy pixels
    labels: np.ndarray      # N int64, 1-based SHAPE_CLASSES index
    masks: np.ndarray       # N x H x W uint8
    keypoints: np.ndarray   # N x K x 3 float32 (x, y, visibility 2)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear blend of two random colours along a random direction, with mild noise."""
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (np.cos(angle) * xs / width + np.sin(angle) * ys / height)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    first, second = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    image = first * (1 - ramp[..., None]) + second * ramp[..., None]
    return (image + rng.normal(0, 0.02, image.shape)).astype(np.float32)


def _shape_mask(kind: str, rng: np.random.Generator, center: Tuple[float, float], side: float,
                height: int, width: int) -> np.ndarray:
    from skimage.draw import ellipse, polygon

    cy, cx = center
    rotation = rng.uniform(0, math.pi)
    mask = np.zeros((height, width), dtype=np.uint8)
    if kind == "ellipse":
        rows, cols = ellipse(cy, cx, side / 2 * rng.uniform(0.5, 1.0), side / 2, (height, width),
                             rotation=rotation)
    else:
        if kind == "rectangle":
            half_w, half_h = side / 2, side / 2 * rng.uniform(0.5, 1.0)
            corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
        else:
            corners = np.array([[side / 2 * math.cos(a), side / 2 * math.sin(a)]
                                for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)])
        turn = np.array([[math.cos(rotation), -math.sin(rotation)], [math.sin(rotation), math.cos(rotation)]])
        points = corners @ turn.T + np.array([cx, cy])
        rows, cols = polygon(points[:, 1], points[:, 0], (height, width))
    mask[rows, cols] = 1
    return mask


def boundary_keypoints(mask: np.ndarray, count: int) -> np.ndarray:
    """count x 3: where rays from the mask's centroid at angles 2*pi*k/count leave the mask
    (convex shapes: one crossing per ray), visibility 2."""
    rows, cols = np.nonzero(mask)
    cy, cx = rows.mean(), cols.mean()
    reach = np.arange(0, max(mask.shape), 0.5)
    points = []
    for k in range(count):
        angle = 2 * math.pi * k / count
        xs = np.clip(np.round(cx + reach * math.cos(angle)).astype(int), 0, mask.shape[1] - 1)
        ys = np.clip(np.round(cy - reach * math.sin(angle)).astype(int), 0, mask.shape[0] - 1)
        outside = np.nonzero(mask[ys, xs] == 0)[0]
        last = (outside[0] - 1) if outside.size else len(reach) - 1
        points.append((xs[max(last, 0)] + 0.5, ys[max(last, 0)] + 0.5, 2.0))
    return np.array(points, dtype=np.float32)


def render_scene(rng: np.random.Generator, height: int, width: int, num_keypoints: int = 17,
                 max_objects: int = 12) -> Scene:
    """One scene with its annotations: 1 to about one object per 160x160 pixels (at most
    max_objects), none touching another, each in a colour that stands out from the background."""
    image = _background(rng, height, width)
    area_budget = height * width / (160.0 * 160.0)  # about one object per 160x160 pixels
    wanted = int(rng.integers(1, int(np.clip(area_budget, 2, max_objects)) + 1))
    discs: List[Tuple[float, float, float]] = []  # bounding circles of the placed objects
    boxes, labels, masks, keypoints = [], [], [], []
    for _ in range(wanted * 20):  # rejection sampling: objects neither overlap nor fade in
        if len(masks) == wanted:
            break
        side = rng.uniform(*OBJECT_SIDE_PX) * min(1.0, min(height, width) / 320.0)
        center = (rng.uniform(side / 2, height - side / 2), rng.uniform(side / 2, width - side / 2))
        radius = side / 2 * math.sqrt(2)
        if any(math.hypot(center[0] - y, center[1] - x) < radius + r + 4 for y, x, r in discs):
            continue
        label = int(rng.integers(len(SHAPE_CLASSES)))
        mask = _shape_mask(SHAPE_CLASSES[label], rng, center, side, height, width)
        inside = mask.astype(bool)
        colour = rng.uniform(0, 1, 3)
        if inside.sum() < 200 or np.abs(image[inside].mean(axis=0) - colour).sum() < MIN_CONTRAST:
            continue
        image[inside] = colour + rng.normal(0, 0.02, (int(inside.sum()), 3))
        discs.append((center[0], center[1], radius))
        rows, cols = np.nonzero(inside)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        labels.append(label + 1)
        masks.append(mask)
        keypoints.append(boundary_keypoints(mask, num_keypoints))
    return Scene(np.clip(image, 0, 1).astype(np.float32), np.array(boxes, np.float32).reshape(-1, 4),
                 np.array(labels, np.int64), np.array(masks, np.uint8).reshape(-1, height, width),
                 np.array(keypoints, np.float32).reshape(-1, num_keypoints, 3))


def scene_images(count: int, height: int, width: int, seed: Sequence[int]) -> np.ndarray:
    """count x 3 x H x W float32 scenes in [0, 1]: the `data: shapes` input kind."""
    rng = np.random.default_rng(list(seed))
    return np.stack([render_scene(rng, height, width).image.transpose(2, 0, 1)
                     for _ in range(count)]).astype(np.float32)
