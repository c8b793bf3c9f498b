"""trtflow.random_init: random weights whose outputs follow their input (issue 22 item 2), over a
list of torchvision and timm classifiers, judged on the validation photos (the initialisation
sees only calibration crops)."""
from __future__ import annotations

import copy
from typing import Callable, Dict

import pytest
import torch

from trtflow.data import input_set
from trtflow.random_init import (MIN_RELATIVE_SPREAD, RMS_RANGE, first_tensor, make_informative,
                                 output_statistics)

SPEC = [{"name": "input", "shape": [3, 224, 224], "dtype": "float32", "data": "imagenet_samples"}]


def torchvision_model(name: str) -> Callable[[], torch.nn.Module]:
    import torchvision

    return lambda: getattr(torchvision.models, name)()


def timm_model(name: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)
    return build


# each with what was wrong with its own initialisation on the 8 photos
ARCHITECTURES: Dict[str, Callable[[], torch.nn.Module]] = {
    "mobilenet_v2": torchvision_model("mobilenet_v2"),            # logits ~1e-9, one argmax
    "mobilenet_v3_small": torchvision_model("mobilenet_v3_small"),  # logits ~1e-9
    "efficientnet_b0": torchvision_model("efficientnet_b0"),      # logits ~1e-5 (fp16 subnormal)
    "resnet18": torchvision_model("resnet18"),                    # one argmax for every photo
    "regnet_y_400mf": torchvision_model("regnet_y_400mf"),        # one argmax
    "shufflenet_v2_x1_0": torchvision_model("shufflenet_v2_x1_0"),  # outputs 4e-5 apart
    "timm:resnet18": timm_model("resnet18"),
    "timm:efficientnet_b0": timm_model("efficientnet_b0"),        # logits ~1e-5
    "timm:mobilenetv3_small_100": timm_model("mobilenetv3_small_100"),
    "timm:vit_tiny_patch16_224": timm_model("vit_tiny_patch16_224"),
}


@pytest.fixture(scope="module")
def photos() -> Dict[str, torch.Tensor]:
    validation, _ = input_set("probe", SPEC, 8, "validation")
    calibration, _ = input_set("probe", SPEC, 4, "calibration")
    return {"validation": torch.from_numpy(validation["input"]),
            "calibration": torch.from_numpy(calibration["input"])}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_random_weights_give_outputs_that_follow_the_photo(name: str, photos) -> None:
    torch.manual_seed(0)
    module = ARCHITECTURES[name]()
    initial = copy.deepcopy(module.state_dict())
    record = make_informative(module, [photos["calibration"]], "classification")
    if record["needed"]:  # rescaled to unit spread
        assert record["output_layer"]["adjusted"], record
        assert record["after"]["relative_spread"] > 0.5, record
    else:  # already informative on the calibration crops: left exactly as initialised
        assert all(torch.equal(initial[key], value) for key, value in module.state_dict().items())
    with torch.no_grad():
        stats = output_statistics(first_tensor(module(photos["validation"])), True)
    # on the validation photos: far above fp16's smallest normal (6e-5) and its rounding, a
    # spread of the same order as the values, and the argmax follows the photo
    assert RMS_RANGE[0] < stats["rms"] < RMS_RANGE[1], (name, stats, record)
    assert stats["relative_spread"] > MIN_RELATIVE_SPREAD, (name, stats, record)
    assert stats["distinct_argmax"] >= 4, (name, stats, record)
    # and fp16 can run it: in float16 throughout (PyTorch on the CPU, harsher than an engine,
    # which accumulates in fp32) its logits stay within 2 % (0.2-1.2 % here; with per-channel
    # centred batch norms MobileNetV2 5 %, ShuffleNetV2 4 %; as the architecture initialises
    # them, MobileNets and EfficientNets underflow: NaN or zeros)
    with torch.no_grad():
        exact = first_tensor(module(photos["validation"])).double()
        half = first_tensor(copy.deepcopy(module).half()(photos["validation"].half())).double()
    assert float((half - exact).norm() / exact.norm()) < 0.02, name


def test_an_output_layer_followed_by_an_activation_is_left_as_it_is(photos) -> None:
    """SqueezeNet ends Conv -> ReLU -> pooling: re-centring the Conv would not re-centre the
    output, so the change is undone and the record says why."""
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.squeezenet1_1()
    weight = module.classifier[1].weight.detach().clone()
    record = make_informative(module, [photos["calibration"]], "classification")
    assert not record["output_layer"]["adjusted"] and "affine" in record["output_layer"]["why"]
    assert torch.equal(module.classifier[1].weight, weight)


def test_a_model_with_a_term_after_its_output_layer_keeps_it(photos) -> None:
    """The verdict tests' near-constant classifier (offset + 1e-5 x head): its output is not the
    head's, so it stays near-constant, as those tests need."""
    from user_models.verdict_models import near_constant

    torch.manual_seed(0)
    module = near_constant()
    small = torch.nn.functional.interpolate(photos["calibration"], size=16)
    record = make_informative(module, [small], "classification")
    assert not record["output_layer"]["adjusted"]
    assert record["after"]["relative_spread"] < 1e-4
