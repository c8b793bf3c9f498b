"""Bad input and faults, run for real: one clear error naming the file, the model or the key and
what to do; no shell command the config did not ask for; and the next run after the fix (or, for a
corrupt artifact, with no fix at all) succeeds without manual cleanup."""
from __future__ import annotations

import copy
import os
import csv
import random
import shlex
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, Workflow, tiny_config, token_entry

pytestmark = pytest.mark.workflow


# --- corrupt artifacts: one error naming the file and its stage; the next run rebuilds -------

CORRUPTED = {  # model -> the artifact truncated (with a new mtime) after a good run
    "tok_export": "results/onnx/tok_export/exported.onnx",
    "tok_engine": "results/engines/tok_engine/{tag}/fp32-small.ort.onnx",
    "tok_sidecar": "results/engines/tok_sidecar/{tag}/fp32-small.json",
    "tok_reference": "results/reference/tok_reference/cpu.npz",
    "tok_weights": "results/weights/tok_weights.pt",
    "tok_meta": "results/weights/tok_meta.json",
}


@pytest.fixture(scope="module")
def corrupted_run(tmp_path_factory):
    from trtflow.backend import onnxruntime_backend

    flow = Workflow(tmp_path_factory.mktemp("corrupt"))
    models = {name: token_entry({"random": True, "seed": i}) for i, name in enumerate(CORRUPTED)}
    flow.write_config(tiny_config(models=models, precisions=["fp32"]))
    flow.run("all")
    tag = onnxruntime_backend("python", "").tag
    for relative in CORRUPTED.values():
        path = flow.path(relative.format(tag=tag))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])  # truncated, and newer than what it made
    done = flow.run("all", check=False)
    return flow, tag, done


def test_each_corrupt_artifact_gives_one_error_naming_it_and_its_stage(corrupted_run):
    flow, tag, done = corrupted_run
    text = done.stdout + done.stderr
    assert done.returncode != 0
    stages = {"tok_export": "export", "tok_engine": "engine", "tok_sidecar": "engine",
              "tok_reference": "reference", "tok_weights": "weights", "tok_meta": "weights"}
    with open(flow.path("results/summary.csv")) as handle:
        rows = {r["model"]: r for r in csv.DictReader(handle)}
    for model, relative in CORRUPTED.items():
        path = relative.format(tag=tag)
        # the weights JSON is read by the summary alone: its error is in the failed run's summary
        where = rows[model]["failures"] if model == "tok_meta" else text
        assert f"file '{path}': cannot read this" in where, (path, where[-5000:])
        assert f"made by the workflow's '{stages[model]}' stage" in where
        assert flow.path(path + ".corrupt").exists(), path  # the next run deletes and remakes it
    # a cell whose engine, sidecar or reference broke did not finish; a cell whose export or
    # weights broke keeps its engine and validation of the same provenance (made before)
    assert {m for m, r in rows.items() if r["verdict"] == "error"} >= {
        "tok_engine", "tok_sidecar", "tok_reference", "tok_meta"}
    assert "google.protobuf" not in text.split("trtflow error")[0][-2000:]


def test_the_next_run_rebuilds_without_manual_cleanup(corrupted_run):
    flow, tag, _ = corrupted_run
    flow.run("all")
    assert flow.scheduled() == {}
    # the corrupt files were deleted and remade where something still needs them (an export
    # whose engine and validation are current may stay missing, as any intermediate file)
    assert not list(flow.path("results").rglob("*.corrupt"))
    for model in ("tok_engine", "tok_sidecar", "tok_reference", "tok_meta"):
        assert flow.path(CORRUPTED[model].format(tag=tag)).exists(), model
    with open(flow.path("results/summary.csv")) as handle:
        assert {r["verdict"] for r in csv.DictReader(handle)} == {"passed"}


# --- shell injection and interpreter paths ---------------------------------------------------

@pytest.mark.parametrize("key", ["python", "tensorrt.python"])
def test_an_interpreter_path_is_checked_and_never_run_by_a_shell(workflow: Workflow, tmp_path, key):
    marker = tmp_path / "injected"
    config = tiny_config(models={"tok": token_entry({"random": True})}, precisions=["fp32"])
    value = f"/usr/bin/python3; touch {marker};"
    if key == "python":
        config["python"] = value
    else:
        config["backend"] = "tensorrt"
        config["tensorrt"] = {"python": value}
    workflow.write_config(config)
    text = workflow.fails("trtflow:")
    assert not marker.exists()
    assert (f"python: '{value}' is not an executable file" in text if key == "python"
            else "backend: tensorrt, but cannot run" in text), text[-3000:]


@pytest.mark.parametrize("architecture, kwargs", [
    ("os:system", lambda marker: {"command": f"touch {marker}"}),
    ("subprocess:call", lambda marker: {"args": ["touch", str(marker)]}),
])
def test_a_standard_library_factory_is_refused_and_never_called(workflow: Workflow, tmp_path,
                                                                architecture, kwargs):
    """Issue 24 case 1: `architecture: os:system` ran its command in the weights stage."""
    marker = tmp_path / "injected"
    entry = token_entry({"random": True}, architecture=architecture,
                        architecture_kwargs=kwargs(marker))
    workflow.write_config(tiny_config(models={"tok": entry}, precisions=["fp32"]))
    text = workflow.fails(f"model 'tok': architecture '{architecture}' is a function of Python's "
                          "standard library", "fix: set models.tok.architecture")
    assert not marker.exists()
    assert "Traceback" not in text and workflow.files() == []


def test_every_factory_failure_is_one_trtflow_error_line(workflow: Workflow):
    """Issue 24 case 2: a wrong keyword and a factory returning 42 were raw tracebacks."""
    models = {"kw": token_entry({"random": True}, architecture_kwargs={"bogus": 1}),
              "num": token_entry({"random": True}, architecture="user_models.faulty:returns_a_number"),
              "exc": token_entry({"random": True}, architecture="user_models.faulty:raises_inside")}
    workflow.write_config(tiny_config(models=models, precisions=["fp32"]))
    text = workflow.fails(
        "trtflow error: model 'kw': architecture 'user_models.token_classifier:build' cannot be "
        "called with architecture_kwargs {'bogus': 1}",
        "trtflow error: model 'num': architecture 'user_models.faulty:returns_a_number' returned "
        "int ('42'), not a torch.nn.Module",
        "trtflow error: model 'exc': architecture 'user_models.faulty:raises_inside' failed while "
        "building the model, at ", "faulty.py:30 in raises_inside: ValueError: width 8 is not",
        args=("all", "--keep-going"))
    assert "unexpected failure" not in text and "Traceback" not in text, text[-4000:]
    assert text.count("  fix: ") >= 3
    with open(workflow.path("results/summary.csv")) as handle:
        rows = {r["model"]: r for r in csv.DictReader(handle)}
    assert all(r["verdict"] == "error" and "architecture 'user_models." in r["failures"]
               for r in rows.values()), rows


def test_a_results_dir_with_a_space_or_a_semicolon_is_refused(workflow: Workflow):
    for results_dir in ("my results", "", "/abs/path", "../up", "r;touch x"):
        config = tiny_config(models={"tok": token_entry({"random": True})}, results_dir=results_dir)
        workflow.write_config(config)
        workflow.fails("invalid config at 'results_dir'", args=("-n", "all"))


# --- configs that cannot work are refused at parse time ---------------------------------------

@pytest.mark.parametrize("edit,needles", [
    (lambda c: (c["batch_profiles"]["small"].update(max=100000),
                c["models"]["tok"]["inputs"][0].update(shape=[3, 224, 224], dtype="float32")),
     ["batch profile 'small' (max 100000) needs 56.1 GiB", "fix: lower batch_profiles.small.max"]),
    (lambda c: c["models"].update({"my net": c["models"].pop("tok")}), ["invalid config at 'models'"]),
    (lambda c: c["models"].update({"-tok": c["models"].pop("tok")}), ["invalid config at 'models'"]),
    (lambda c: c.update(exclude=[{"model": "tok"}]), ["the matrix has no cell"]),
    (lambda c: c["models"]["tok"]["inputs"][0].update(range=[5, -5]), ["needs low < high"]),
    (lambda c: c["models"]["tok"].update(outputs=["logits", "logits"]),
     ["invalid config at 'models.tok.outputs'", "non-unique"]),
    (lambda c: c["models"]["tok"].update(outputs=[""]), ["invalid config at 'models.tok.outputs[0]'"]),
    # issue 24 case 3: 8.0 passed, then the precision job refused `--num-samples 8.0`
    (lambda c: (c.update(precisions=["int8"]), c["calibration"].update(num_samples=8.0)),
     ["invalid config at 'calibration.num_samples': 8.0 is not of type 'integer'"]),
    # case 4: a trailing newline passed the name patterns
    (lambda c: c["models"].update({"tok\n": c["models"].pop("tok")}), ["invalid config at 'models'"]),
    (lambda c: c.update(results_dir="r_nl\n"), ["invalid config at 'results_dir'"]),
    # case 5: no length limit (File name too long in a job; Snakemake's PeriodicWildcardError)
    (lambda c: c["models"].update({"t" * 230: c["models"].pop("tok")}),
     ["invalid config at 'models'", "is too long"]),
    (lambda c: c["models"].update({"a" * 200: c["models"].pop("tok")}), ["is too long"]),
    (lambda c: c["models"].update({"tok" + "a" * 30: c["models"].pop("tok")}),
     ["which Snakemake takes for a cyclic dependency", "fix: rename models.tokaaa"]),
    # every file name a job writes fits the file system, checked when the workflow starts
    (lambda c: c.update(results_dir="r/" + "x" * 256), ["trtflow: model 'tok': rule ", "of results_dir",
                                                         "is longer than this file system allows"]),
])
def test_configs_that_cannot_work_are_refused_before_any_job(workflow: Workflow, edit, needles):
    config = tiny_config(models={"tok": token_entry({"random": True})})
    edit(config)
    workflow.write_config(config)
    text = workflow.fails(*needles, args=("-n", "all"))
    assert "Traceback" not in text
    assert workflow.files() == []


def test_a_results_dir_that_leads_outside_through_a_symlink_is_refused(workflow: Workflow,
                                                                      tmp_path):
    """Issue 24 case 6: the check was lexical, so a symlinked results_dir planned writes into
    whatever it pointed at."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    workflow.path("results").symlink_to(outside, target_is_directory=True)
    config = tiny_config(models={"tok": token_entry({"random": True})}, precisions=["fp32"])
    workflow.write_config(config)
    workflow.fails(f"results_dir 'results' leads to {outside}, outside the working directory",
                   "fix: point results_dir at a folder inside the working directory, or set "
                   "results_dir_outside_workdir: true", args=("-n", "all"))
    assert list(outside.iterdir()) == []
    config["results_dir_outside_workdir"] = True  # said explicitly: planned
    workflow.write_config(config)
    workflow.run("-n", "all")


def test_unlock_needs_no_cores(workflow: Workflow):
    workflow.write_config(tiny_config(models={"tok": token_entry({"random": True})}))
    done = subprocess.run(["python3", "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(workflow.directory), "--configfile",
                           str(workflow.config_path), "--unlock"], capture_output=True, text=True)
    assert done.returncode == 0 and "Unlocked" in done.stdout + done.stderr, done.stderr[-2000:]


# --- a seeded config fuzz: a clean error or a valid plan, never a traceback ------------------

def _mutations(base: dict, count: int, seed: int = 0):
    """Seeded mutations of config/config.yaml: wrong types, missing and extra keys, negative and
    huge numbers, nulls, odd names."""
    rng = random.Random(seed)
    odd_values = [None, -1, 0, 10**12, -10**9, 1.5, "", "x y", "a;b", [], {}, [1, 2], {"k": 1},
                  True, "../x", "-dash", "ü", 3.0e38]

    def paths(node, prefix=()):
        if isinstance(node, dict):
            for key, value in node.items():
                yield prefix + (key,)
                yield from paths(value, prefix + (key,))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield prefix + (index,)
                yield from paths(value, prefix + (index,))

    all_paths = list(paths(base))
    for _ in range(count):
        config = copy.deepcopy(base)
        path = rng.choice(all_paths)
        parent = config
        for part in path[:-1]:
            parent = parent[part]
        action = rng.choice(["value", "value", "delete", "extra", "rename"])
        last = path[-1]
        if action == "value":
            parent[last] = rng.choice(odd_values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[last]
        elif action == "extra" and isinstance(parent, dict):
            parent[rng.choice(["extra", "Models", "precision", "tolerance"])] = rng.choice(odd_values)
        elif action == "rename" and isinstance(parent, dict):
            parent[rng.choice(["a b", "x;y", "-n", "v1.2", "ok_name", ""])] = parent.pop(last)
        else:
            parent[last] = rng.choice(odd_values)
        yield path, action, config


def test_config_fuzz_gives_a_clean_error_or_a_valid_plan(tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())

    def plan(case) -> str:
        index, (path, action, config) = case
        flow = Workflow(tmp_path / f"case{index}")
        flow.directory.mkdir()
        flow.write_config(config)
        done = flow.run("-n", "all", check=False)
        text = done.stdout + done.stderr
        assert "Traceback" not in text, (path, action, text[-3000:])
        if done.returncode == 0:
            return "plan"
        assert ("trtflow: " in text or "invalid config" in text), (path, action, text[-3000:])
        return "error"
    # a dry run is one Python process on one CPU for ~2 s: two at a time on a 2-CPU machine
    with ThreadPoolExecutor(max_workers=max(2, len(os.sched_getaffinity(0)))) as pool:
        outcomes = list(pool.map(plan, enumerate(_mutations(base, 60))))
    assert outcomes.count("plan") > 0 and outcomes.count("error") > 0, outcomes


# --- crashes, downloads and outputs of another structure: said, not a traceback ---------------

def _image_entry(architecture: str, **extra) -> dict:
    entry = {"architecture": architecture, "task": "classification", "weights": {"random": True},
             "inputs": [{"name": "images", "shape": [3, 64, 64], "dtype": "float32"}],
             "outputs": ["logits"]}
    entry.update(extra)
    return entry


def test_a_stage_killed_by_a_signal_says_which_and_what_to_try(workflow: Workflow):
    workflow.write_config(tiny_config(models={"crash": _image_entry("user_models.faulty:segfault")},
                                      precisions=["fp32"]))
    text = workflow.fails("weights.py was killed by SIGSEGV (11)", "a native library")
    with open(workflow.path("results/summary.csv")) as handle:
        row = next(csv.DictReader(handle))
    assert row["verdict"] == "error" and "killed by SIGSEGV" in row["failures"], row
    assert "Segmentation fault" in workflow.path("results/logs/weights/crash.log").read_text()
    assert "trtflow error" in text


def test_a_factory_that_downloads_is_refused_with_the_argument_to_set(workflow: Workflow, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # nothing cached
    entry = _image_entry("user_models.faulty:pretrained_classifier")
    workflow.write_config(tiny_config(models={"net": entry}, precisions=["fp32"]))
    workflow.fails("model 'net': architecture", "asked to download https://example.invalid/",
                   "pretrained asks for pretrained weights",
                   "fix: set models.net.architecture_kwargs: {pretrained: false}")


def test_a_torchvision_factory_is_built_without_its_default_weights(workflow: Workflow, tmp_path,
                                                                    monkeypatch):
    """torchvision's detectors default to an ImageNet backbone: built with it off, so nothing is
    downloaded and random weights are random (the next stop is the outputs it was given)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # nothing cached
    detector = "torchvision.models.detection:fasterrcnn_mobilenet_v3_large_fpn"
    entry = _image_entry(detector, outputs=["boxes", "labels", "scores"])
    workflow.write_config(tiny_config(models={"det": entry}, precisions=["fp32"],
                                      batch_profiles={"one": {"min": 1, "opt": 1, "max": 1}}))
    text = workflow.fails("model 'det': outputs ['boxes', 'labels', 'scores']: this torchvision "
                          "detector returns ['labels', 'boxes', 'scores']")
    assert "download" not in text
    assert not (tmp_path / "torch-home").exists()


def test_an_interpreter_in_a_folder_with_a_space_runs(workflow: Workflow, tmp_path):
    """Quoted where it reaches the shell: a real path with a space works. The interpreter there
    is a wrapper that execs this test's Python, not a symlink to it: a symlink to a venv's
    python starts the base interpreter (Python finds its venv from the path it was started by),
    which has none of the venv's packages."""
    folder = tmp_path / "my pythons"
    folder.mkdir()
    python = folder / "python3"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    prefix = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert prefix == sys.prefix  # this test's environment, venv or not
    config = tiny_config(models={"tok": token_entry({"random": True})}, precisions=["fp32"])
    config["python"] = str(folder / "python3")
    workflow.write_config(config)
    workflow.run("all")
    with open(workflow.path("results/summary.csv")) as handle:
        assert [r["verdict"] for r in csv.DictReader(handle)] == ["passed"]


# --- issue 24 case 12: a full disk is one trtflow error naming the file; the rerun recovers ----

def test_a_full_disk_is_one_error_and_the_run_after_freeing_space_recovers(workflow: Workflow):
    results = workflow.path("results")
    results.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(results)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        config = tiny_config(models={"tok": token_entry({"random": True})}, precisions=["fp32"])
        workflow.write_config(config)
        workflow.run("all")
        filler = results / "filler"
        with open(filler, "wb", buffering=0) as handle:  # the disk is full from here on
            try:
                while True:
                    handle.write(b"\0" * (1 << 16))
                    handle.flush()
            except OSError:
                pass
        # the reference is made again, needing far more than the outputs Snakemake removes first
        config["validation"]["num_samples"] = 20000
        workflow.write_config(config)
        text = workflow.fails("trtflow error: file 'results/reference/tok/cpu.npz': no space left "
                              "on the device while writing this file", "fix: free space on the "
                              "disk of results/reference/tok (`df -h results/reference/tok`)")
        assert "Traceback" not in text and "unexpected failure" not in text, text[-5000:]
        filler.unlink()
        config["validation"]["num_samples"] = 4
        workflow.write_config(config)
        workflow.run("all")
        assert workflow.scheduled() == {}
        with open(workflow.path("results/summary.csv")) as handle:
            assert [r["verdict"] for r in csv.DictReader(handle)] == ["passed"]
        assert not list(results.rglob(".*.tmp"))
    finally:
        subprocess.run(["umount", "--lazy", str(results)], check=False)


def test_a_model_that_takes_one_sample_per_call_is_told_the_fix_that_works(workflow: Workflow):
    """Issue 24 case 13: the export's fix pointed at `inputs`, the reference stage showed a
    traceback; the fix named (static_batch: 1 and a {1, 1, 1} profile) makes the run pass."""
    entry = {"architecture": "user_models.faulty:one_sample_at_a_time", "weights": {"random": True},
             "inputs": [{"name": "images", "shape": [3, 8, 8], "dtype": "float32"}],
             "outputs": ["logits"], "task": "generic"}
    config = tiny_config(models={"one": entry}, precisions=["fp32"])
    workflow.write_config(config)
    text = workflow.fails("trtflow error: model 'one': the model takes one sample per call, not a "
                          "batch of 2", "fix: set models.one.static_batch: 1, add a batch profile "
                          "of one sample (batch_profiles: {one: {min: 1, opt: 1, max: 1}}) and "
                          "run the model only in it (models.one.batch_profiles: [one])")
    assert "Traceback" not in text and "unexpected failure" not in text, text[-5000:]
    assert "models.one.inputs" not in text
    # both stages that run the model on a batch say it, the reference stage included
    assert "takes one sample per call" in workflow.path("results/logs/reference/one-cpu.log").read_text()
    config["batch_profiles"]["one"] = {"min": 1, "opt": 1, "max": 1}
    entry.update(static_batch=1, batch_profiles=["one"])
    workflow.write_config(config)
    workflow.run("all")
    with open(workflow.path("results/summary.csv")) as handle:
        assert [(r["batch_profile"], r["verdict"]) for r in csv.DictReader(handle)] == [("one", "passed")]
