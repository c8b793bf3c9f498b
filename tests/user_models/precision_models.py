"""User models with one layer that reduced precision breaks, for precision debugging
(trtflow.debug): the layer is known, so a test can check that the search names it."""
import torch
from torch import nn


class EdgeCNN(nn.Module):
    """A small CNN whose depthwise `edge` convolution has large 3x3 kernels that sum to zero, as
    MobileNetV2's BN-folded first depthwise kernels nearly do, and reads activations that sit at
    a large common level (the `stem`'s bias). Int8 (or fp16) rounds each weight by well under 1 %
    of its size; the kernel no longer sums to zero, and the common level, which the exact kernel
    cancels, leaks into an output that is otherwise small. Every other layer is ordinary."""

    def __init__(self, classes: int = 10, level: float = 50.0, weight_scale: float = 10.0,
                 seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.edge = nn.Conv2d(8, 8, 3, groups=8)  # no zero padding: it would not cancel
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))
        with torch.no_grad():
            self.stem.weight.copy_(0.3 * torch.randn(self.stem.weight.shape, generator=generator))
            self.stem.bias.fill_(level)
            kernels = weight_scale * torch.randn(self.edge.weight.shape, generator=generator)
            self.edge.weight.copy_(kernels - kernels.mean(dim=(1, 2, 3), keepdim=True))
            self.edge.bias.zero_()
            for layer in (self.head[1], self.head[5]):
                layer.weight.copy_(0.3 * torch.randn(layer.weight.shape, generator=generator))
                layer.bias.zero_()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.edge(torch.relu(self.stem(image))))


def edge_cnn(classes: int = 10, level: float = 50.0, weight_scale: float = 10.0,
             seed: int = 0) -> EdgeCNN:
    return EdgeCNN(classes, level, weight_scale, seed)
