"""User models whose references test the verdicts: outputs too small for fp16, and a graph with
nothing int8 can quantise."""
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
