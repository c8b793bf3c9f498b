"""Factories that fail the way real ones do: a native crash, a download while building the model."""


def segfault():
    """Crashes the process (reads address 0), as a broken native extension would."""
    import ctypes

    ctypes.string_at(0)


def pretrained_classifier(pretrained: bool = True):
    """Asks for pretrained weights by default, as timm-style factories do: a hub download."""
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 10))
    if pretrained:
        model.load_state_dict(torch.hub.load_state_dict_from_url(
            "https://example.invalid/classifier.pth"))
    return model


def returns_a_number():
    """Returns something that is no model, as a factory with a missing `return model` line
    returning a count would."""
    return 42


def raises_inside(width: int = 8):
    """Fails in the user's own code while building the model."""
    raise ValueError(f"width {width} is not supported by this backbone")


def one_sample_at_a_time(features: int = 3 * 8 * 8, classes: int = 5):
    """A model written for one sample per call (it flattens the whole input, batch axis and
    all), as many hand-written deployment models are: a batch of 2 fails inside forward()."""
    import torch

    class OneSample(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(features, classes)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.head(images.reshape(features)).unsqueeze(0)

    return OneSample()
