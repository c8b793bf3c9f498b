# Path and matrix helpers shared by every stage. Parse time only: nothing heavy is imported here.
import atexit
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, workflow.basedir)  # the trtflow package lives beside the Snakefile

from trtflow.backend import RESOLVED_ENV, TORCH_SIDE_MODULES, backend_of_run, check_interpreter
from trtflow.config import (Cell, matrix, model_opset, model_patch_options, model_tolerances,
                            name_regex, validate_config)
from trtflow.errors import TrtflowError
from trtflow.interpreter_env import shell_snapshot
from trtflow.io import corrupt_artifacts, remove_corrupt_artifacts
from trtflow.jobgraph import JobGraph
from trtflow.models import BUILTIN_ARCHITECTURES
from trtflow.provenance import module_source_digest
from trtflow.summary import CELL_ARTIFACTS

BASEDIR = Path(workflow.basedir)
SCRIPTS = BASEDIR / "workflow_scripts"
# what a command printed for the user (trtflow.commands) needs to see this run's config: the
# --configfile files (absolute), the config files read, and the --config overrides
RERUN = {"configfiles": [str(f) for f in workflow.config_settings.configfiles],
         "default_config": [str(f) for f in workflow.configfiles],
         "config": list(workflow.config_settings.config_args or [])}

try:
    _files = ", ".join(str(f) for f in workflow.configfiles) or "config/config.yaml"
    CONFIG = validate_config(config, f"{_files} (with --config overrides)")
    # PyTorch-side scripts: the configured interpreter, else this one; under --sdm conda the
    # rule's environment provides `python`.
    _conda = "conda" in str(getattr(workflow.deployment_settings, "deployment_method", ""))
    if CONFIG["python"] and workflow.is_main_process:
        check_interpreter("python", CONFIG["python"], TORCH_SIDE_MODULES)
    # resolved once, by the main process (on a cluster: the submit host); its jobs take it over
    BACKEND = backend_of_run(CONFIG, CONFIG["python"] or ("python" if _conda else sys.executable),
                             workflow.is_main_process)
except TrtflowError as error:
    raise WorkflowError(f"trtflow: {error}")

# the main process's environment reaches the jobs it starts: executors that do not pass it
# whole (sbatch --export=ALL does) pass what is named here
envvars:
    RESOLVED_ENV


if workflow.is_main_process:
    logger.info(f"trtflow backend: {BACKEND.name} [{BACKEND.tag}] ({BACKEND.reason})")


def warn_of_a_cluster_fallback():
    """On a cluster, `auto` resolved on a submit host without a GPU means no GPU node is used:
    say so when the run starts (the executor is known only then, not at parse time)."""
    if workflow.non_local_exec and BACKEND.name == "onnxruntime" and CONFIG["backend"] == "auto":
        logger.warning(
            f"trtflow: backend auto resolved to ONNX Runtime on this host ({BACKEND.resolved_on}), "
            "which decides for every job of the run: GPU nodes will not be used. To run "
            "TensorRT from a host without a GPU, set backend: tensorrt and tensorrt.target "
            "(README, Scale-out).")
R = CONFIG["results_dir"]
TAG = BACKEND.tag
TORCH_PY = BACKEND.torch_python
BACKEND_PY = BACKEND.python
# the job's interpreter variables, kept across a TensorRT Python wrapper for the PyTorch worker
WORKFLOW_ENV = shell_snapshot()
ON_GPU = BACKEND.name == "tensorrt"
# what a job's node must have (trtflow/node.py): engine, timing and validation jobs the backend,
# the reference and PyTorch baselines the device they run on
REQUIRES_BACKEND = json.dumps(BACKEND.requirement("backend"), sort_keys=True)
REQUIRES_TORCH = json.dumps(BACKEND.requirement("torch"), sort_keys=True)
CELLS = matrix(CONFIG)
MODELS = sorted({c.model for c in CELLS})

wildcard_constraints:
    model=name_regex(),
    precision="|".join(CONFIG["precisions"]),
    profile=name_regex(),

# Provenance (trtflow/jobgraph.py): every rule takes params.provenance, one digest of everything
# upstream of its outputs, derived from the rules themselves; a change anywhere upstream reruns
# everything downstream, even when an intermediate file is missing.
JOBS = JobGraph(workflow, BASEDIR)
provenance_of = JOBS.provenance_param


def input_producers(wildcards, input):
    return json.dumps(JOBS.producers_param(wildcards, input))


def model_code(wildcards):
    """A user factory's module source (architecture: package.module:factory), so editing it
    reruns that model's chain; built-in architectures are trtflow code or torchvision's."""
    architecture = model_spec(wildcards.model)["architecture"]
    if architecture in BUILTIN_ARCHITECTURES:
        return ""
    return factory_source_digest(architecture.partition(":")[0])


@functools.lru_cache(maxsize=None)
def factory_source_digest(module):
    """Read and parse a user module once per run, not once per job that builds the model."""
    return module_source_digest(module)


def model_spec(model):
    return CONFIG["models"][model]


# The keys of a model's config entry each stage reads: a stage gets only those, so an edit to
# one key (say the model's patch options) reruns only the stages that read it.
# what builds the model: a torchvision detector's deploy module also takes its input size,
# output names and detection count (trtflow/detection.py)
MODEL_KEYS = ("architecture", "architecture_kwargs", "inputs", "outputs", "max_detections")
SPEC_KEYS = {
    "weights": MODEL_KEYS + ("weights",),
    "export": MODEL_KEYS + ("static_batch",),
    "reference": MODEL_KEYS + ("labels", "static_batch"),
    "baseline": MODEL_KEYS + ("static_batch",),
    "precision": ("inputs",),
}


def spec_json(stage):
    def params(wildcards):
        spec = model_spec(wildcards.model)
        return json.dumps({k: spec[k] for k in SPEC_KEYS[stage] if spec.get(k) is not None},
                          sort_keys=True)

    return params


# the keep_precision lists a precision reads: fp16 graphs keep the fp32 list, int8 graphs both,
# so editing one list reruns only the graphs it changes
from trtflow.config import backend_keep_precision

KEPT_FOR = {"fp32": (), "fp16": ("fp32",), "int8": ("fp16", "fp32")}


def kept_precision_json(wildcards):
    kept = model_spec(wildcards.model).get("keep_precision") or {}
    return json.dumps(backend_keep_precision(kept, BACKEND.name, KEPT_FOR[wildcards.precision]),
                      sort_keys=True)


def calibration_images(wildcards):
    folder = CONFIG["calibration"]["images"]
    if wildcards.precision != "int8" or not folder:
        return []
    from trtflow.data import image_files

    return [str(p) for p in image_files(folder)]


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
WEIGHTS = f"{R}/weights/{{model}}.pt"
WEIGHTS_META = f"{R}/weights/{{model}}.json"
EXPORTED = f"{R}/onnx/{{model}}/exported.onnx"
PATCHED = f"{R}/onnx/{{model}}/{BACKEND.name}/patched.onnx"
# ONNX Runtime's int8 graph depends on the target CPU's int8 form (trtflow/cpu.py): one folder each
GRAPH_PARTS = [BACKEND.name] + ([BACKEND.info["int8_form"]] if "int8_form" in BACKEND.info else [])
GRAPHS = os.path.join(*GRAPH_PARTS)
GRAPHS_LABEL = "-".join(GRAPH_PARTS)
PRECISION_ONNX = f"{R}/onnx/{{model}}/{GRAPHS}/{{precision}}.onnx"
PRECISION_REPORT = f"{R}/onnx/{{model}}/{GRAPHS}/{{precision}}.json"
ENGINE_EXT = "engine" if ON_GPU else "ort.onnx"
ENGINE = f"{R}/engines/{{model}}/{TAG}/{{precision}}-{{profile}}.{ENGINE_EXT}"
ENGINE_META = f"{R}/engines/{{model}}/{TAG}/{{precision}}-{{profile}}.json"
REFERENCE = f"{R}/reference/{{model}}/{BACKEND.device}.npz"
BASELINE = f"{R}/baseline/{{model}}/{BACKEND.device}/{{profile}}.json"
BENCHMARK = f"{R}/benchmark/{{model}}/{TAG}/{{precision}}-{{profile}}.json"
VALIDATION = f"{R}/validation/{{model}}/{TAG}/{{precision}}-{{profile}}.json"
SUMMARY_CSV = f"{R}/summary.csv"
LATENCY_CSV = f"{R}/latency.csv"
LAYER_PROFILE_CSV = f"{R}/layer_profile.csv"
PLOTS = [f"{R}/plots/latency_vs_batch.png", f"{R}/plots/accuracy_vs_speed.png",
         f"{R}/plots/layer_time.png"]
LOGS = f"{R}/logs"
TIMES = f"{R}/timing"


# The benchmark settings the timing jobs read (slower_margin is the summary's: changing it
# re-times nothing).
def timing_settings(*unread):
    """The benchmark block a timing job reads (the summary reads slower_margin)."""
    return json.dumps({k: v for k, v in CONFIG["benchmark"].items()
                       if k not in ("slower_margin",) + unread}, sort_keys=True)


TIMING_SETTINGS = timing_settings()


def torch_timer_json(wildcards):
    """The PyTorch model the benchmark times beside its engine (what the baseline job times)."""
    return json.dumps({"model": wildcards.model, "spec": json.loads(spec_json("baseline")(wildcards)),
                       "device": BACKEND.device,
                       "threads": CONFIG["onnxruntime"]["intra_op_threads"]}, sort_keys=True)


# Backend options and flags the engine, timing and validation rules pass to their scripts.
def runner_options(wildcards=None):
    if ON_GPU:
        return json.dumps({"cuda_graph": CONFIG["tensorrt"]["cuda_graph"]})
    return json.dumps({"threads": CONFIG["onnxruntime"]["intra_op_threads"]})


def engine_options(wildcards):
    """Backend build options from config; TensorRT builds share one timing cache per TRT+GPU."""
    if not ON_GPU:  # the model's own session options over the top-level ones
        options = {k: v for k, v in CONFIG["onnxruntime"].items() if k != "isa"}
        options.update(model_spec(wildcards.model).get("onnxruntime") or {})
        return json.dumps(options, sort_keys=True)
    options = {k: v for k, v in CONFIG["tensorrt"].items()
               if k not in ("python", "target", "cuda_graph", "int8_speed")}
    if wildcards.precision != "int8":  # what an int8 engine's float layers run in
        options.pop("int8_float")
    if options.pop("timing_cache"):
        options["timing_cache_path"] = f"{R}/engines/timing-cache-{TAG}.bin"
    speed = int8_speed_inputs(wildcards)
    if speed:
        options["int8_speed"] = {**CONFIG["tensorrt"]["int8_speed"], **speed}
    return json.dumps(options, sort_keys=True)


def int8_speed_inputs(wildcards):
    """What the latency-aware int8 placement (tensorrt.int8_speed) compares an int8 engine with:
    the fp16 engine of the same model and batch profile, timed on the reference inputs. None
    where it does not apply (another backend or precision, rounds 0, no fp16 cell)."""
    fp16 = Cell(wildcards.model, "fp16", wildcards.profile)
    if not (ON_GPU and wildcards.precision == "int8" and CONFIG["tensorrt"]["int8_speed"]["rounds"]
            and fp16 in CELLS):
        return {}
    names = dict(model=wildcards.model, precision="fp16", profile=wildcards.profile)
    return {"fp16_engine": ENGINE.format(**names), "fp16_sidecar": ENGINE_META.format(**names),
            "reference": REFERENCE.format(model=wildcards.model)}


def all_cores(wildcards):
    """Threads of a timing job: every core of the run, so no other job runs beside it. Asked when
    the job is planned, not at parse time: `snakemake --unlock` needs no --cores. A cluster run
    has no --cores: 1, unless the profile sets them (profiles/slurm: set-threads, and the job
    has its node to itself)."""
    return workflow.global_resources["_cores"].value or 1


def validate_flags(wildcards):
    """validate.py's optional arguments, one list item each (the shell quotes each)."""
    spec = model_spec(wildcards.model)
    flags = ["--detection-min-score",
             str(spec.get("detection_min_score", CONFIG["validation"]["detection_min_score"])),
             "--detection-match-fraction", str(CONFIG["validation"]["detection_match_fraction"])]
    if CONFIG["validation"]["check_expected_labels"]:
        flags.append("--check-expected-labels")
    if is_pretrained(wildcards.model):
        flags.append("--pretrained")
    return flags


VERDICTS_JSON = f"{R}/verdicts.json"
# written by the on-error handler beside a partial summary; the next run sets those files aside
PARTIAL_MARKER = f"{R}/.partial-summary.json"
RUN_STARTED = time.time()


def cell_paths(cell):
    wildcards = dict(model=cell.model, precision=cell.precision, profile=cell.batch_profile)
    return {"model": cell.model, "precision": cell.precision, "batch_profile": cell.batch_profile,
            "benchmark": BENCHMARK.format(**wildcards), "validation": VALIDATION.format(**wildcards),
            "baseline": BASELINE.format(**wildcards), "weights": WEIGHTS_META.format(**wildcards),
            "precision_report": PRECISION_REPORT.format(**wildcards)}


def summary_cells():
    """Each cell's artifact paths, the provenance they must record to be current, and the logs of
    every job that makes them (upstream first), for the summary's `error` rows."""
    cells = []
    for cell in CELLS:
        paths = cell_paths(cell)
        provenance, logs = {}, []
        for kind in CELL_ARTIFACTS:
            digest_, job_logs = JOBS.record_of(paths[kind])
            provenance[kind] = digest_
            logs += [log for log in job_logs if log not in logs]
        cells.append({**paths, "backend": BACKEND.name, "provenance": provenance, "logs": logs})
    return cells


def plans_only(argv=None):
    """Whether this Snakemake invocation runs no job (a dry run, the report, the linter): then
    the workflow changes nothing on disk."""
    argv = sys.argv[1:] if argv is None else argv
    flags = {"--dry-run", "--dryrun", "--report", "--lint", "--unlock"}
    # -n alone or among other short flags (-np, -nq)
    return any(a in flags or (len(a) > 1 and a[0] == "-" and a[1] != "-" and a[1:].isalpha()
                              and "n" in a[1:]) for a in argv)


PLANS_ONLY = plans_only()
# files a run that only plans leaves on disk but must plan to make again (a corrupt artifact, a
# failed run's summary): what `--forcerun FILE` does
REMADE_IN_PLAN = set()


def plan_remade(wildcards):
    """An input function of the target `all`, evaluated as the DAG is built. It forces the jobs
    that make REMADE_IN_PLAN, and so everything downstream of them (Snakemake reads --forcerun
    before the Snakefile is parsed, so that cannot be set at parse time). No input of its own."""
    if REMADE_IN_PLAN and workflow.dag is not None:
        workflow.dag.forcefiles.update(REMADE_IN_PLAN)
    return []


def summary_cells_json(wildcards, input=None):
    """params.cells: every cell's paths, expected provenance and logs, i.e. what the summary's
    inputs are and which jobs made them. Taking `input` makes it a param derived from the input
    for Snakemake, which then leaves it out of its params record and out of `reason:` lines (they
    printed all 20 kB of it when one cell changed); params.provenance records its digest."""
    return json.dumps(summary_cells())


def set_aside_partial_summary():
    """A partial summary (written after a failed run) must not pass for a current one: move it to
    results/last-failed-run/ so that Snakemake makes the summary, and what it needs, again. A dry
    run leaves it in place and plans the same (plan_remade)."""
    # (a job's own Snakemake process, which a cluster job starts, leaves this to the main one)
    if not os.path.exists(PARTIAL_MARKER) or not workflow.is_main_process:
        return
    if PLANS_ONLY:
        REMADE_IN_PLAN.update(json.load(open(PARTIAL_MARKER))["files"])
        return
    aside = Path(R) / "last-failed-run"
    aside.mkdir(parents=True, exist_ok=True)
    for path in json.load(open(PARTIAL_MARKER))["files"]:
        if os.path.exists(path):
            os.replace(path, aside / Path(path).name)
    os.remove(PARTIAL_MARKER)
    logger.info(f"trtflow: the summary of the last, failed run is in {aside}/; this run makes it anew")


def recover_corrupt_artifacts():
    """Artifacts a job of the last run found corrupt (it marked them), and everything made from
    them, are deleted before the DAG is built, so that this run makes all of them again (an
    intermediate alone would not be: Snakemake leaves a missing file missing while what was made
    from it is current). A dry run deletes nothing and plans the same (plan_remade). Called once
    every rule is defined."""
    corrupt = corrupt_artifacts(R) if workflow.is_main_process else []
    if not corrupt:
        return
    if PLANS_ONLY:
        REMADE_IN_PLAN.update(corrupt)
        return
    derived = [p for p in JOBS.derived_from(corrupt, CELLS) if os.path.exists(p)]
    remove_corrupt_artifacts(corrupt)
    for path in derived:
        os.remove(path)
    for path in corrupt:
        logger.info(f"trtflow: deleted {path}, found corrupt by the last run; its stage makes it "
                    "again")
    if derived:
        logger.info(f"trtflow: deleted what was made from it, made again too: {', '.join(derived)}")


set_aside_partial_summary()


REPORT_HTML = f"{R}/report.html"
# trtflow's landing page (rules/summary.smk): the report's first screen includes it
OVERVIEW_HTML = f"{R}/index.html"


def write_report(say=logger.info):
    """The HTML report (snakemake --report), with the same command line so that the same config
    and targets are reported; only when Snakemake itself was run (not the API in a test)."""
    launched_by_cli = "snakemake" in Path(sys.argv[0]).as_posix()
    if CONFIG["report"]["html"] and launched_by_cli and "--report" not in sys.argv:
        say(f"trtflow: writing {REPORT_HTML} (snakemake --report)")
        # its own parse of the Snakefile prints the backend line again and a line per file it
        # adds: shown only when it fails, so a run says its backend once
        done = subprocess.run([sys.executable, "-m", "snakemake", *sys.argv[1:], "--report",
                               REPORT_HTML], capture_output=True, text=True, check=False,
                              cwd=WORKDIR)
        if done.returncode != 0:
            say(f"trtflow: snakemake --report failed ({done.returncode}):\n"
                + (done.stdout + done.stderr)[-3000:])


def summary_of_this_run(failed=False):
    """summary.csv when this run made it, or when it succeeded and its targets need the summary
    (then it is current), else None: a run of another target (one engine, debug_precision) has
    no verdict table, and a failed run shows no summary of an earlier run."""
    summary = Path(WORKDIR, SUMMARY_CSV)
    if not summary.exists():
        return None
    if summary.stat().st_mtime >= RUN_STARTED:
        return summary
    planned = workflow.dag is not None and any(job.rule.name == "summary"
                                               for job in workflow.dag.jobs)
    return summary if planned and not failed else None


def verdict_table(failed=False):
    """The run's last words: every cell's verdict, p50, speed-up, key metric and failure, then
    the counts (trtflow/overview.py)."""
    from trtflow.overview import run_verdict

    summary = summary_of_this_run(failed)
    if summary is None:
        return None
    return run_verdict(summary, [SUMMARY_CSV, OVERVIEW_HTML]
                       + ([REPORT_HTML] if CONFIG["report"]["html"] else []))


# what the end-of-run handlers saw: whether onsuccess/onerror ran, whether Snakemake had nothing
# to do
END_OF_RUN = {"handled": False, "nothing_to_do": False}


def end_of_run(failed=False):
    """onsuccess / onerror: the report, then the verdict table last."""
    END_OF_RUN["handled"] = True
    write_report()
    table = verdict_table(failed)
    if table:
        logger.info(table)


def note_nothing_to_do(record):
    """A logging filter: Snakemake says 'Nothing to be done' and returns without calling
    onsuccess (snakemake/workflow.py), so that is how a no-op run is recognised."""
    if NOTHING_TO_BE_DONE_MSG in str(record.msg):
        END_OF_RUN["nothing_to_do"] = True
    return True


def end_of_a_run_with_nothing_to_do():
    """At exit of a no-op run (not a dry run): the verdict table all the same, and the report
    written when it is missing or older than the summary. Snakemake has closed its logger by
    now, so this prints to stderr, where its log went."""
    if END_OF_RUN["handled"] or not END_OF_RUN["nothing_to_do"] or workflow.dryrun:
        return

    summary = summary_of_this_run()
    if summary is None:  # the targets do not need the summary: neither report nor table
        return

    def say(message):
        print(message, file=sys.stderr, flush=True)

    report_file = Path(WORKDIR, REPORT_HTML)
    if not report_file.exists() or report_file.stat().st_mtime < summary.stat().st_mtime:
        write_report(say)
    say(verdict_table())


WORKDIR = os.getcwd()  # Snakemake's --directory; it changes back before the exit handlers run
if workflow.is_main_process and "--report" not in sys.argv:
    from snakemake.common import NOTHING_TO_BE_DONE_MSG

    logger.addFilter(note_nothing_to_do)
    atexit.register(end_of_a_run_with_nothing_to_do)
