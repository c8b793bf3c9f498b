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
