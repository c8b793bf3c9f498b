"""A user's own model, as a user would write it: its own module, a factory, its own checkpoint.

It takes int64 token ids, the input dtype that trips TensorRT users (int32 engines)."""
import torch
from torch import nn


class TokenClassifier(nn.Module):
    def __init__(self, vocab: int = 100, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.mix(self.embed(tokens)))
        return self.head(hidden.mean(dim=1))


def build(vocab: int = 100, dim: int = 32, classes: int = 10) -> TokenClassifier:
    return TokenClassifier(vocab, dim, classes)
