"""trtflow.models: architecture names, factories, checkpoint formats, weight matching, eval_wrapper."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Dict

import pytest
import torch
import torchvision

from trtflow.errors import TrtflowError
from trtflow.models import (BUILTIN_ARCHITECTURES, eval_wrapper, build_model, check_architecture,
                            extract_state_dict, load_trained_model, load_weights, resolve_factory)
from user_models.token_classifier import TokenClassifier


@pytest.fixture(scope="module")
def resnet_state() -> Dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return torchvision.models.resnet18(weights=None).state_dict()


# --- architecture names ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BUILTIN_ARCHITECTURES) + [
    "user_models.token_classifier:build", "pkg.sub.module:make_model"])
def test_check_architecture_accepts_builtins_and_module_factory(name: str) -> None:
    check_architecture("net", name)  # no exception


@pytest.mark.parametrize("name, suggestion", [("resnet_18", "'resnet18'"),
                                              ("mobilenetv2", "'mobilenet_v2'"),
                                              ("resnet5", "'resnet50'")])
def test_unknown_architecture_suggests_close_names(name: str, suggestion: str) -> None:
    with pytest.raises(TrtflowError) as info:
        check_architecture("net", name)
    assert str(info.value).startswith(f"model 'net': unknown architecture '{name}'")
    assert f"did you mean {suggestion}" in info.value.fix


def test_unknown_architecture_without_close_name_lists_the_builtins() -> None:
    with pytest.raises(TrtflowError) as info:
        check_architecture("net", "transformer-xl")
    assert "did you mean" not in info.value.fix
    assert "mobilenet_v2, resnet18, resnet50" in info.value.fix
    assert "'package.module:function'" in info.value.fix


@pytest.mark.parametrize("name", ["os:system", "subprocess:call", "builtins:exec", "sys:exit",
                                  "shutil:rmtree", "importlib:import_module", "pickle:loads",
                                  "os.path:join", "runpy:run_path", "__main__:main"])
def test_a_standard_library_function_is_no_factory(name: str) -> None:
    """A config must not run shell commands: `os:system` with {command: ...} would."""
    with pytest.raises(TrtflowError) as info:
        check_architecture("net", name)
    assert str(info.value).startswith(f"model 'net': architecture '{name}' is a function of "
                                      "Python's standard library")
    assert "returns a torch.nn.Module" in info.value.fix
    with pytest.raises(TrtflowError, match="standard library"):  # nor at run time
        resolve_factory("net", name)


def test_a_factory_name_with_a_trailing_newline_is_unknown() -> None:
    with pytest.raises(TrtflowError, match="unknown architecture"):
        check_architecture("net", "user_models.token_classifier:build\n")


def test_resolve_factory_reports_a_module_that_does_not_import() -> None:
    with pytest.raises(TrtflowError, match="cannot import 'no_such_pkg.models' for architecture"):
        resolve_factory("net", "no_such_pkg.models:build")


def test_resolve_factory_reports_a_missing_factory() -> None:
    with pytest.raises(TrtflowError, match="'user_models.token_classifier' has no callable 'nope'"):
        resolve_factory("net", "user_models.token_classifier:nope")


def test_resolve_factory_returns_the_torchvision_function() -> None:
    assert resolve_factory("net", "resnet18") is torchvision.models.resnet18


# --- building ----------------------------------------------------------------------------------

def test_build_model_builtin_passes_kwargs_and_is_in_eval_mode() -> None:
    module = build_model("net", {"architecture": "resnet18",
                                 "architecture_kwargs": {"num_classes": 7}})
    assert isinstance(module, torchvision.models.ResNet)
    assert module.fc.out_features == 7
    assert not module.training


def test_build_model_user_factory_with_kwargs() -> None:
    module = build_model("tok", {"architecture": "user_models.token_classifier:build",
                                 "architecture_kwargs": {"classes": 3, "dim": 8}})
    assert isinstance(module, TokenClassifier)
    assert module.head.out_features == 3 and module.embed.embedding_dim == 8
    assert not module.training


@pytest.mark.parametrize("architecture, kwargs, needles", [
    ("user_models.token_classifier:build", {"bogus": 1},
     ["cannot be called with architecture_kwargs {'bogus': 1}",
      "unexpected keyword argument 'bogus'", "only parameters of build(vocab: int = 100"]),
    ("user_models.faulty:returns_a_number", {},
     ["returned int ('42'), not a torch.nn.Module", "make returns_a_number return the model"]),
    ("user_models.faulty:raises_inside", {"width": 3},
     ["failed while building the model, at ", "faulty.py:30 in raises_inside: ValueError: "
      "width 3 is not supported", "fix: fix the factory there, or models.net.architecture_kwargs"]),
])
def test_every_factory_failure_is_one_error_naming_the_model_and_factory(
        architecture: str, kwargs: dict, needles: list) -> None:
    with pytest.raises(TrtflowError) as info:
        build_model("net", {"architecture": architecture, "architecture_kwargs": kwargs})
    text = str(info.value)
    assert text.startswith(f"model 'net': architecture '{architecture}'"), text
    assert info.value.fix and "\n  fix: " in text
    for needle in needles:
        assert needle in text, (needle, text)


# --- checkpoint formats ------------------------------------------------------------------------

@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model_state_dict", "model", "module_prefix"])
def test_extract_state_dict_accepts_common_wrappers(resnet_state: Dict[str, torch.Tensor],
                                                    wrap: str) -> None:
    if wrap == "bare":
        checkpoint = resnet_state
    elif wrap == "module_prefix":  # saved from a DataParallel model
        checkpoint = OrderedDict((f"module.{k}", v) for k, v in resnet_state.items())
    else:
        checkpoint = {wrap: resnet_state, "epoch": 12, "optimizer": {"lr": 0.1}}
    state = extract_state_dict(checkpoint, "net", "ckpt.pt")
    assert list(state) == list(resnet_state)
    assert all(torch.equal(state[k], resnet_state[k]) for k in resnet_state)


def test_extract_state_dict_from_a_module_object() -> None:
    module = TokenClassifier()
    for checkpoint in (module, {"model": module}):
        state = extract_state_dict(checkpoint, "tok", "ckpt.pt")
        assert set(state) == set(module.state_dict())


def test_extract_state_dict_refuses_a_mapping_of_non_tensors() -> None:
    with pytest.raises(TrtflowError) as info:
        extract_state_dict({"epoch": 3, "lr": 0.1}, "net", "ckpt.pt")
    assert "model 'net': file 'ckpt.pt': checkpoint holds no state_dict" in str(info.value)
    assert "torch.save(model.state_dict(), path)" in info.value.fix


# --- weight matching ---------------------------------------------------------------------------

def test_load_weights_names_missing_and_unexpected_keys() -> None:
    resnet = build_model("net", {"architecture": "resnet18"})
    mobilenet_state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    with pytest.raises(TrtflowError) as info:
        load_weights(resnet, mobilenet_state, "net", "resnet18", "mobilenet.pt")
    text = str(info.value)
    assert "weights do not match architecture 'resnet18'" in text
    assert f"{len(resnet.state_dict())} missing (e.g. conv1.weight" in text
    assert f"{len(mobilenet_state)} unexpected (e.g. features.0.0.weight" in text


def test_load_weights_names_the_tensor_of_another_shape(resnet_state: Dict[str, torch.Tensor]) -> None:
    ten_classes = build_model("net", {"architecture": "resnet18",
                                      "architecture_kwargs": {"num_classes": 10}})
    with pytest.raises(TrtflowError) as info:
        load_weights(ten_classes, resnet_state, "net", "resnet18", "r.pt")
    text = str(info.value)
    assert "2 of another shape" in text
    assert "fc.weight: checkpoint (1000, 512) vs model (10, 512)" in text
    assert "missing" not in text and "unexpected" not in text
    assert "num_classes" in info.value.fix


def test_load_weights_loads_a_matching_state(resnet_state: Dict[str, torch.Tensor]) -> None:
    module = build_model("net", {"architecture": "resnet18"})
    load_weights(module, resnet_state, "net", "resnet18", "r.pt")
    assert torch.equal(module.conv1.weight, resnet_state["conv1.weight"])


def test_load_trained_model_reproduces_the_saved_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = TokenClassifier().eval()
    path = tmp_path / "tok.pt"
    torch.save(original.state_dict(), path)
    loaded = load_trained_model("tok", {"architecture": "user_models.token_classifier:build"},
                                str(path))
    tokens = torch.randint(0, 100, (3, 16))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), original(tokens))
    assert not loaded.training


# --- eval_wrapper -------------------------------------------------------------------------------

class _DropoutDict(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = torch.nn.Dropout(0.9)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"a": self.drop(x), "b": x * 2}


def test_eval_wrapper_returns_a_tuple_and_stays_in_eval_mode() -> None:
    wrapped = eval_wrapper(_DropoutDict())
    wrapped.train()  # export and inference code may call train(); it must not switch modes
    assert not wrapped.training and not wrapped.inner.drop.training
    x = torch.ones(2, 100)
    out = wrapped(x)
    assert isinstance(out, tuple) and len(out) == 2
    assert torch.equal(out[0], x)  # dropout inactive
    assert torch.equal(out[1], x * 2)


def test_eval_wrapper_wraps_a_single_tensor_output() -> None:
    out = eval_wrapper(TokenClassifier())(torch.zeros(1, 16, dtype=torch.long))
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (1, 10)


def test_torchvision_factories_are_built_with_their_weights_off() -> None:
    """Built-in names and `torchvision...:factory` entries alike; trtflow's own and user
    factories keep their signature's defaults."""
    from torchvision.models import detection, mobilenet_v2

    from trtflow.models import no_download_kwargs
    from trtflow.zoo import rtdetr_r18

    assert no_download_kwargs(detection.fcos_resnet50_fpn) == {"weights": None,
                                                               "weights_backbone": None}
    assert no_download_kwargs(mobilenet_v2) == {"weights": None}
    assert no_download_kwargs(rtdetr_r18) == {}
    built = build_model("det", {"architecture": "torchvision.models.detection:fcos_resnet50_fpn",
                                "architecture_kwargs": {"num_classes": 3},
                                "inputs": [{"name": "images", "shape": [3, 64, 64]}],
                                "outputs": ["labels", "boxes", "scores"], "max_detections": 7})
    # a torchvision detector comes adapted: one image per call, outputs padded to 7 rows
    assert built.detector.head.classification_head.num_classes == 3
    assert built.static_batch == 1 and built.detector.detections_per_img == 7
    labels, boxes, scores = built(torch.rand(1, 3, 64, 64))
    assert labels.dtype == torch.int32 and tuple(boxes.shape) == (1, 7, 4)
    assert tuple(scores.shape) == (1, 7)
    assert built.adapter_rewrites == ["resize off"]  # what export.json reports it changed


def test_ssd_postprocessing_over_all_classes_at_once_keeps_torchvision_s_detections() -> None:
    """The adapter's one-TopK SSD post-processing against torchvision's per-class loop, on head
    outputs of distinct scores: the same boxes, scores and labels in the same order."""
    import torch
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from trtflow.detection import _batched_ssd_postprocess, batch_ssd_postprocess

    torch.manual_seed(0)
    ssd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).eval()
    count = 3000
    corners = torch.rand(2, count, 2) * 300
    anchors = [torch.cat([c, c + 20 + torch.rand(count, 2) * 40], dim=1) for c in corners]
    head = {"cls_logits": torch.randn(2, count, 21) * 3, "bbox_regression": torch.randn(2, count, 4) * 0.1}
    looped = ssd.postprocess_detections(head, anchors, [(320, 320)] * 2)
    batched = _batched_ssd_postprocess(ssd, head, anchors, [(320, 320)] * 2)
    for theirs, ours in zip(looped, batched):
        assert len(theirs["scores"]) == ssd.detections_per_img
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(theirs[key], ours[key]), key
    assert batch_ssd_postprocess(ssd) and not batch_ssd_postprocess(torch.nn.Linear(1, 1))
