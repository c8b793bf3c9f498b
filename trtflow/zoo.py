"""Built-in models that torchvision does not have, each wrapped as it is deployed (torchvision's
own detectors need no wrapper here: trtflow.detection adapts them).

`rtdetr_r18`: RT-DETR (transformers' implementation, built from a config: no hub download) with
an R18-style backbone, behind the deploy interface users know from the official RT-DETR export:
inputs `images` (float, N x 3 x H x W) and `orig_target_sizes` (int32, N x 2 as width, height),
outputs `labels` (int32), `boxes` (xyxy in original-image pixels) and `scores`, top-k over
queries x classes.
"""
from __future__ import annotations

from typing import Any


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
