"""User models whose references test the verdicts: outputs too small for fp16, a graph with
nothing int8 can quantise, and outputs an engine that ignores its input reproduces (a
near-constant classifier, a segmenter that predicts one class everywhere)."""
import torch
from torch import nn


class ScaledCNN(nn.Module):
    """A small CNN whose logits are multiplied by `scale`: at 1e-13 every logit lies below
    float16's smallest normal number (6.1e-5), as with a badly scaled initialisation."""

    def __init__(self, classes: int = 10, scale: float = 1e-13) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, classes)
        self.scale = scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image)) * self.scale


class Elementwise(nn.Module):
    """Only Exp, ReduceMean and Sqrt, none of which ONNX Runtime's quantiser quantises: the int8
    precision stage fails for real ("inserted no QuantizeLinear node")."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.exp(image).mean(dim=(2, 3)))


def scaled_cnn(classes: int = 10, scale: float = 1e-13) -> ScaledCNN:
    return ScaledCNN(classes, scale)


def elementwise() -> Elementwise:
    return Elementwise()


class NearConstant(nn.Module):
    """A classifier whose logits are one random vector (`offset` times a standard normal) for
    every input, the input's part `spread` of it, as issue 22 found random-weight classifiers
    (outputs across very different photos 1e-5 apart, every argmax the same class). The input's
    part is a random projection of the whole image (no global pooling, which would average the
    noise inputs away), so with offset 0 and spread 1 the logits depend on the input."""

    def __init__(self, classes: int = 10, spread: float = 1e-5, offset: float = 3.0,
                 size: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(),
                                      nn.Flatten())
        self.head = nn.Linear(8 * (size // 4) ** 2, classes)  # size x size inputs
        self.offset = nn.Parameter(offset * torch.randn(classes))
        self.spread = spread

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.offset + self.spread * self.head(self.features(image))


class OneClassSegmenter(nn.Module):
    """Per-pixel logits of `classes` classes whose class 0 wins at every pixel of any input."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(3, classes, 3, padding=1)
        self.favourite = nn.Parameter(torch.tensor([10.0] + [0.0] * (classes - 1)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(image) + self.favourite[None, :, None, None]


def near_constant(classes: int = 10, spread: float = 1e-5, offset: float = 3.0) -> NearConstant:
    return NearConstant(classes, spread, offset)


def one_class_segmenter(classes: int = 4) -> OneClassSegmenter:
    return OneClassSegmenter(classes)
