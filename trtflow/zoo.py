"""Built-in models that torchvision does not have, each wrapped as it is deployed.

`rtdetr_r18`: RT-DETR (transformers' implementation, built from a config: no hub download) with
an R18-style backbone, behind the deploy interface users know from the official RT-DETR export:
inputs `images` (float, N x 3 x H x W) and `orig_target_sizes` (int32, N x 2 as width, height),
outputs `labels` (int32), `boxes` (xyxy in original-image pixels) and `scores`, top-k over
queries x classes.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator


def _rtdetr_config(num_labels: int, backbone_depths: Any):
    from transformers import RTDetrConfig, RTDetrResNetConfig

    backbone = RTDetrResNetConfig(depths=list(backbone_depths), layer_type="basic",
                                  hidden_sizes=[64, 128, 256, 512],
                                  out_features=["stage2", "stage3", "stage4"])
    return RTDetrConfig(backbone_config=backbone, encoder_in_channels=[128, 256, 512],
                        num_labels=num_labels)


def rtdetr_r18(num_labels: int = 80, top_k: int = 100, backbone_depths=(2, 2, 2, 2)):
    """RT-DETR-R18 deploy module (randomly initialised; load a checkpoint through `weights`).

    transformers' initialisation leaves the encoder input projections so small that every
    anchor gets the same encoder score, and the top-300 query selection is then pure tie-breaking
    (PyTorch and ONNX Runtime break ties differently, so no engine could be validated). They are
    re-initialised with Kaiming-normal weights, as trained weights would make them distinct."""
    import torch
    from transformers import RTDetrForObjectDetection

    detector = RTDetrForObjectDetection(_rtdetr_config(num_labels, backbone_depths))
    with torch.no_grad():
        for projection in list(detector.model.encoder_input_proj) + list(detector.model.decoder_input_proj):
            torch.nn.init.kaiming_normal_(projection[0].weight, nonlinearity="linear")
    return rtdetr_deploy(detector, top_k)


def rtdetr_deploy(detector, top_k: int):
    """The deploy wrapper around a transformers RT-DETR (class built here: no torch at import)."""
    import torch

    class Deploy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.detector = detector
            self.top_k = top_k

        def forward(self, images, orig_target_sizes):
            out = self.detector(pixel_values=images)
            logits, boxes = out.logits, out.pred_boxes
            num_classes = logits.shape[-1]
            cx, cy, w, h = boxes.unbind(-1)
            xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
            # sizes arrive as int32 (what TensorRT takes); scale in the boxes' float type
            xyxy = xyxy * orig_target_sizes.to(xyxy.dtype).repeat(1, 2).unsqueeze(1)
            scores, index = logits.sigmoid().flatten(1).topk(self.top_k, dim=1)
            labels = (index % num_classes).to(torch.int32)
            query = torch.div(index, num_classes, rounding_mode="floor")
            boxes = xyxy.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
            return labels, boxes, scores

    return Deploy().eval()


# --- Mask R-CNN / Keypoint R-CNN ------------------------------------------------------------
# torchvision's implementations of the Detectron2 R50-FPN architectures (Detectron2 itself is not
# on PyPI). The deploy module fixes what makes the raw graph hostile to TensorRT and to a
# batched pipeline: one image of a fixed size (no data-dependent resize), the normalisation inside,
# no mask pasting (the 28x28 mask of each detection is returned, as the Detectron2 TensorRT sample
# does), and every output padded to `detections` rows so that output shapes are static.
RCNN_SIZE_MULTIPLE = 32  # FPN strides: torchvision pads to a multiple of 32, so we require one
DEFAULT_RCNN_IMAGE_SIZE = 1344  # the Detectron2 TensorRT sample's input (1344 = 42 x 32)


def _rcnn_image_size(image_size: Any) -> tuple:
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if height % RCNN_SIZE_MULTIPLE or width % RCNN_SIZE_MULTIPLE:
        raise ValueError(f"image_size {height}x{width} must be a multiple of {RCNN_SIZE_MULTIPLE} "
                         "on both sides (the FPN's coarsest stride)")
    return int(height), int(width)


def maskrcnn_r50_fpn(image_size: Any = DEFAULT_RCNN_IMAGE_SIZE, num_classes: int = 91,
                     detections: int = 100, **kwargs: Any):
    """Mask R-CNN R50-FPN deploy module: images (1 x 3 x H x W, RGB in [0, 1]) -> labels (int32),
    boxes (xyxy pixels), scores, masks (1 x detections x 28 x 28 probabilities, box-relative)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    height, width = _rcnn_image_size(image_size)
    detector = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                     box_detections_per_img=detections,
                                     min_size=min(height, width), max_size=max(height, width),
                                     **kwargs)
    return rcnn_deploy(detector, (height, width), detections, ("masks",))


def keypointrcnn_r50_fpn(image_size: Any = DEFAULT_RCNN_IMAGE_SIZE, num_classes: int = 2,
                         num_keypoints: int = 17, detections: int = 100, **kwargs: Any):
    """Keypoint R-CNN R50-FPN deploy module: images (1 x 3 x H x W, RGB in [0, 1]) -> labels
    (int32), boxes, scores, keypoints (1 x detections x K x 3: x, y, visibility) and
    keypoint_scores (1 x detections x K)."""
    from torchvision.models.detection import keypointrcnn_resnet50_fpn

    height, width = _rcnn_image_size(image_size)
    detector = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                         num_classes=num_classes, num_keypoints=num_keypoints,
                                         box_detections_per_img=detections,
                                         min_size=min(height, width), max_size=max(height, width),
                                         **kwargs)
    return rcnn_deploy(detector, (height, width), detections, ("keypoints", "keypoints_scores"))


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


def rcnn_deploy(detector, image_size: tuple, detections: int, extra_outputs: tuple):
    """The deploy wrapper around a torchvision GeneralizedRCNN (class built here: no torch at
    import). A wrong input size is an error here, not an engine that silently detects nothing."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    from .detection import pad_detections

    class Deploy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.detector = detector
            self.image_size = image_size
            self.detections = detections
            self.extra_outputs = extra_outputs

        def forward(self, images):
            if images.shape[0] != 1 or tuple(images.shape[-2:]) != self.image_size:
                raise ValueError(
                    f"this deploy module takes 1 x 3 x {self.image_size[0]} x {self.image_size[1]} "
                    f"images (set architecture_kwargs.image_size to change it), got "
                    f"{list(images.shape)}")
            transform = self.detector.transform
            mean = torch.tensor(transform.image_mean, dtype=images.dtype, device=images.device)
            std = torch.tensor(transform.image_std, dtype=images.dtype, device=images.device)
            images = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
            batch = ImageList(images, [self.image_size])
            features = self.detector.backbone(batch.tensors)
            proposals, _ = self.detector.rpn(batch, features)
            with heatmap_argmax_keypoints():
                result = self.detector.roi_heads(features, proposals, batch.image_sizes)[0][0]
            outputs = [result["labels"].to(torch.int32), result["boxes"], result["scores"]]
            outputs += [result[name].flatten(0, 1) if name == "masks" else result[name]
                        for name in self.extra_outputs]
            return tuple(pad_detections(out, self.detections) for out in outputs)

    return Deploy().eval()
