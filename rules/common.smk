# Path and matrix helpers shared by every stage. Parse time only: nothing heavy is imported here.
import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, workflow.basedir)  # the trtflow package lives beside the Snakefile

from trtflow.backend import resolve_backend
from trtflow.config import (matrix, model_opset, model_patch_options, model_tolerances,
                            validate_config)
from trtflow.errors import TrtflowError
from trtflow.io import sha256_files

BASEDIR = Path(workflow.basedir)
SCRIPTS = BASEDIR / "workflow_scripts"

try:
    _files = ", ".join(str(f) for f in workflow.configfiles) or "config/config.yaml"
    CONFIG = validate_config(config, f"{_files} (with --config overrides)")
    # PyTorch-side scripts: the configured interpreter, else this one; under --sdm conda the
    # rule's environment provides `python`.
    _conda = "conda" in str(getattr(workflow.deployment_settings, "deployment_method", ""))
    TORCH_PY = CONFIG["python"] or ("python" if _conda else sys.executable)
    BACKEND = resolve_backend(CONFIG, TORCH_PY)
except TrtflowError as error:
    raise WorkflowError(f"trtflow: {error}")

logger.info(f"trtflow backend: {BACKEND.name} [{BACKEND.tag}] ({BACKEND.reason})")
R = CONFIG["results_dir"]
TAG = BACKEND.tag
BACKEND_PY = BACKEND.python
ON_GPU = BACKEND.name == "tensorrt"
CELLS = matrix(CONFIG)
MODELS = sorted({c.model for c in CELLS})

wildcard_constraints:
    model="[A-Za-z0-9_.-]+",
    precision="fp32|fp16|int8",
    profile="[A-Za-z0-9_]+",

# The code each stage runs: its hash is a param, so editing a stage's code reruns that stage
# (and what depends on it) without the file-time reruns a fresh clone would cause.
STAGE_CODE = {
    "weights": ["trtflow/weights.py", "trtflow/models.py", "workflow_scripts/weights.py"],
    "export": ["trtflow/export.py", "trtflow/models.py", "trtflow/zoo.py", "workflow_scripts/export.py"],
    "patch": ["trtflow/patch.py", "workflow_scripts/patch.py"],
    "precision": ["trtflow/precision.py", "trtflow/data.py", "workflow_scripts/precision.py"],
    "engine": ["trtflow/runners/onnxruntime.py", "trtflow/runners/tensorrt.py",
               "workflow_scripts/engine.py"],
    "reference": ["trtflow/data.py", "trtflow/runners/torch.py", "workflow_scripts/reference.py"],
    "baseline": ["trtflow/benchmark.py", "trtflow/runners/torch.py", "workflow_scripts/baseline.py"],
    "benchmark": ["trtflow/benchmark.py", "trtflow/runners/base.py", "workflow_scripts/benchmark.py"],
    "validate": ["trtflow/validate.py", "trtflow/runners/base.py", "workflow_scripts/validate.py"],
    "summary": ["trtflow/summary.py", "workflow_scripts/summary.py"],
}


def code_hash(stage):
    return sha256_files(BASEDIR / p for p in STAGE_CODE[stage] if (BASEDIR / p).exists())


def model_spec(model):
    return CONFIG["models"][model]


# The keys of a model's config entry each stage reads: a stage gets only those, so an edit to
# one key (say the model's patch options) reruns only the stages that read it.
MODEL_KEYS = ("architecture", "architecture_kwargs")
SPEC_KEYS = {
    "weights": MODEL_KEYS + ("weights",),
    "export": MODEL_KEYS + ("inputs", "outputs", "static_batch"),
    "reference": MODEL_KEYS + ("inputs", "outputs", "labels", "static_batch"),
    "baseline": MODEL_KEYS + ("inputs", "outputs", "static_batch"),
    "precision": ("inputs",),
}


def spec_json(stage):
    def params(wildcards):
        spec = model_spec(wildcards.model)
        return json.dumps({k: spec[k] for k in SPEC_KEYS[stage] if spec.get(k) is not None},
                          sort_keys=True)

    return params


def profile(name):
    return CONFIG["batch_profiles"][name]


def profile_json(wildcards):
    return json.dumps(profile(wildcards.profile), sort_keys=True)


def is_pretrained(model):
    return "random" not in model_spec(model)["weights"]


def weights_input(wildcards):
    """A local checkpoint is a real input: replacing the file reruns that model's chain."""
    weights = model_spec(wildcards.model)["weights"]
    return [weights["path"]] if "path" in weights else []


# Paths: results/<stage>/<model>/...; from the patch stage on they carry the backend, and engines
# (and what is measured on them) the backend's version and device, so a new version rebuilds.
WEIGHTS = R + "/weights/{model}.pt"
WEIGHTS_META = R + "/weights/{model}.json"
EXPORTED = R + "/onnx/{model}/exported.onnx"
PATCHED = R + f"/onnx/{{model}}/{BACKEND.name}/patched.onnx"
PRECISION_ONNX = R + f"/onnx/{{model}}/{BACKEND.name}/{{precision}}.onnx"
ENGINE_EXT = "engine" if ON_GPU else "ort.onnx"
ENGINE = R + f"/engines/{{model}}/{TAG}/{{precision}}-{{profile}}.{ENGINE_EXT}"
ENGINE_META = R + f"/engines/{{model}}/{TAG}/{{precision}}-{{profile}}.json"
REFERENCE = R + f"/reference/{{model}}/{BACKEND.device}.npz"
BASELINE = R + f"/baseline/{{model}}/{BACKEND.device}/{{profile}}.json"
BENCHMARK = R + f"/benchmark/{{model}}/{TAG}/{{precision}}-{{profile}}.json"
VALIDATION = R + f"/validation/{{model}}/{TAG}/{{precision}}-{{profile}}.json"
SUMMARY_CSV = R + "/summary.csv"
LATENCY_CSV = R + "/latency.csv"
PLOTS = [R + "/plots/latency_vs_batch.png", R + "/plots/accuracy_vs_speed.png"]
LOGS = R + "/logs"
TIMES = R + "/timing"


def cell_paths(cell):
    wildcards = dict(model=cell.model, precision=cell.precision, profile=cell.batch_profile)
    return {"model": cell.model, "precision": cell.precision, "batch_profile": cell.batch_profile,
            "benchmark": BENCHMARK.format(**wildcards), "validation": VALIDATION.format(**wildcards),
            "baseline": BASELINE.format(**wildcards), "weights": WEIGHTS_META.format(**wildcards)}


onsuccess:
    # The HTML report (snakemake --report) right after a successful `snakemake ... all`, with the
    # same command line, so that the same config and targets are reported.
    launched_by_cli = "snakemake" in Path(sys.argv[0]).as_posix()
    if CONFIG["report"]["html"] and launched_by_cli and "--report" not in sys.argv:
        import subprocess

        report_html = R + "/report.html"
        logger.info(f"trtflow: writing {report_html} (snakemake --report)")
        subprocess.run([sys.executable, "-m", "snakemake", *sys.argv[1:], "--report", report_html],
                       check=False)
