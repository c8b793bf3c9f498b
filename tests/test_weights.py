"""trtflow.weights: seeded random weights, checkpoints, sha256 checks, built-in sources."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from conftest import REPO, resnet_entry, token_entry
from trtflow.errors import TrtflowError
from trtflow.io import read_json, sha256_file
from trtflow.weights import BUILTIN_SOURCES, check_sha256, fetch_builtin, prepare_weights


def prepare(tmp_path: Path, model: str, spec: Dict[str, Any], tag: str = "w") -> Dict[str, Any]:
    return prepare_weights(model, spec, tmp_path / "cache", tmp_path / f"{tag}.pt",
                           tmp_path / f"{tag}.json")


def load_state(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def states_equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_random_weights_are_reproducible_by_seed(tmp_path: Path) -> None:
    meta_a = prepare(tmp_path, "tok", token_entry({"random": True, "seed": 5}), "a")
    meta_b = prepare(tmp_path, "tok", token_entry({"random": True, "seed": 5}), "b")
    prepare(tmp_path, "tok", token_entry({"random": True, "seed": 6}), "c")
    a, b, c = (load_state(tmp_path / f"{t}.pt") for t in "abc")
    assert states_equal(a, b)
    assert not torch.equal(a["embed.weight"], c["embed.weight"])
    assert meta_a["seed"] == 5 and meta_a["weights"] == "random"
    assert meta_a["num_parameters"] == meta_b["num_parameters"] == 100 * 32 + 32 * 32 + 32 + 32 * 10 + 10


def test_random_weights_metadata_is_written_and_matches_the_file(tmp_path: Path) -> None:
    meta = prepare(tmp_path, "tok", token_entry({"random": True, "seed": 0}))
    assert read_json(tmp_path / "w.json") == meta
    assert meta == {"weights": "random", "seed": 0, "source": "random", "source_sha256": None,
                    "reinitialised_zero_layers": [], "model": "tok", "architecture": "user_models.token_classifier:build",
                    "num_parameters": meta["num_parameters"],
                    "informative_init": meta["informative_init"],
                    "sha256": sha256_file(tmp_path / "w.pt")}
    # the token classifier's output layer is its last Linear: rescaled to unit spread
    informative = meta["informative_init"]
    assert informative["output_layer"]["adjusted"], informative
    assert abs(informative["after"]["relative_spread"] - 1.0) < 0.05, informative


def test_checkpoint_path_is_loaded_and_resaved(tmp_path: Path, resnet18_checkpoint: Path) -> None:
    meta = prepare(tmp_path, "net", resnet_entry({"path": str(resnet18_checkpoint)}))
    assert meta["weights"] == "checkpoint" and meta["source"] == str(resnet18_checkpoint)
    assert meta["source_sha256"] == sha256_file(resnet18_checkpoint)
    assert meta["num_parameters"] == 11_689_512  # torchvision resnet18
    assert states_equal(load_state(tmp_path / "w.pt"), load_state(resnet18_checkpoint))


def test_checkpoint_wrapped_in_state_dict_key_loads(tmp_path: Path, resnet18_checkpoint: Path) -> None:
    original = load_state(resnet18_checkpoint)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": original, "epoch": 90, "arch": "resnet18"}, wrapped)
    meta = prepare(tmp_path, "net", resnet_entry({"path": str(wrapped)}))
    assert meta["source_sha256"] == sha256_file(wrapped)
    assert states_equal(load_state(tmp_path / "w.pt"), original)


def test_wrong_sha256_raises_naming_the_model_and_writes_nothing(
        tmp_path: Path, resnet18_checkpoint: Path) -> None:
    spec = resnet_entry({"path": str(resnet18_checkpoint), "sha256": "0" * 64})
    with pytest.raises(TrtflowError) as info:
        prepare(tmp_path, "mynet", spec)
    text = str(info.value)
    assert text.startswith(f"model 'mynet': file '{resnet18_checkpoint}': sha256 mismatch")
    assert f"expected {'0' * 64}, got {sha256_file(resnet18_checkpoint)}" in text
    assert info.value.model == "mynet"
    assert not (tmp_path / "w.pt").exists() and not (tmp_path / "w.json").exists()


def test_right_sha256_is_accepted(tmp_path: Path, resnet18_checkpoint: Path) -> None:
    digest = sha256_file(resnet18_checkpoint)
    meta = prepare(tmp_path, "net", resnet_entry({"path": str(resnet18_checkpoint), "sha256": digest}))
    assert meta["source_sha256"] == digest


def test_missing_checkpoint_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pt"
    with pytest.raises(TrtflowError) as info:
        prepare(tmp_path, "net", resnet_entry({"path": str(missing)}))
    assert str(info.value).startswith(f"model 'net': file '{missing}': weights file not found")


def test_corrupt_checkpoint_is_reported(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a torch file")
    with pytest.raises(TrtflowError, match="cannot read checkpoint"):
        prepare(tmp_path, "net", resnet_entry({"path": str(corrupt)}))


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    checkpoint = tmp_path / "tok.pt"
    from user_models.token_classifier import TokenClassifier

    torch.save(TokenClassifier().state_dict(), checkpoint)
    with pytest.raises(TrtflowError, match="weights do not match architecture 'resnet18'"):
        prepare(tmp_path, "net", resnet_entry({"path": str(checkpoint)}))
    assert not (tmp_path / "w.pt").exists()


def test_check_sha256_returns_the_digest_and_checks_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert check_sha256(path, None, "m") == digest
    assert check_sha256(path, digest, "m") == digest
    with pytest.raises(TrtflowError, match="sha256 mismatch"):
        check_sha256(path, "f" * 64, "m")


def test_unknown_builtin_source_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(TrtflowError) as info:
        fetch_builtin("imagenet_resnet", tmp_path, "net")
    assert "unknown built-in weights source 'imagenet_resnet'" in str(info.value)
    assert "torchvision_mobilenet_v2_imagenet" in info.value.fix


CACHED_MOBILENET = REPO / "resources" / "cache" / "weights" / (
    BUILTIN_SOURCES["torchvision_mobilenet_v2_imagenet"].sha256 + ".pth")


def test_builtin_source_found_in_cache_is_used_without_download(mobilenet_checkpoint) -> None:
    # the fixture fetched it (downloading at most once): now it must come from the cache as is
    before = mobilenet_checkpoint.stat().st_mtime_ns
    path = fetch_builtin("torchvision_mobilenet_v2_imagenet", CACHED_MOBILENET.parent, "mnet")
    assert path == CACHED_MOBILENET == mobilenet_checkpoint
    assert path.stat().st_mtime_ns == before


def test_builtin_weights_are_prepared_as_pretrained(tmp_path: Path, mobilenet_checkpoint) -> None:
    spec = resnet_entry({"builtin": "torchvision_mobilenet_v2_imagenet"}, size=224)
    spec["architecture"] = "mobilenet_v2"
    meta = prepare_weights("mnet", spec, CACHED_MOBILENET.parent, tmp_path / "m.pt",
                           tmp_path / "m.json")
    assert meta["weights"] == "pretrained"
    assert meta["source"] == "builtin:torchvision_mobilenet_v2_imagenet"
    assert meta["source_sha256"] == BUILTIN_SOURCES["torchvision_mobilenet_v2_imagenet"].sha256
    assert meta["num_parameters"] == 3_504_872


def test_random_weights_reset_zero_initialised_layers() -> None:
    """torchvision's ViT starts its head at zero: random weights would give all-zero logits."""
    import torch
    import torchvision

    from trtflow.weights import reset_zero_layers

    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1,
                                               num_heads=2, hidden_dim=8, mlp_dim=16).eval()
    image = torch.randn(2, 3, 32, 32)
    assert not vit(image).any()
    assert reset_zero_layers(vit) == ["heads.head"]
    logits = vit(image)
    assert logits.std() > 0.01 and not torch.equal(logits[0], logits[1])
    assert reset_zero_layers(vit) == []

