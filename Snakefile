# trtflow: PyTorch weights -> ONNX -> patched ONNX -> per-precision graphs -> engines
#          -> benchmark + validation -> summary table, plots and HTML report.
# Run: snakemake --cores 4 all        (README.md explains config, outputs and backends)
from snakemake.utils import min_version

min_version("9.20")


# config/config.yaml is the default matrix; `--configfile other.yaml` replaces it instead of being
# merged into it (a merge would silently add the default models to every custom matrix).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"



report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/weights.smk"
include: "rules/export.smk"
include: "rules/patch.smk"
include: "rules/precision.smk"
include: "rules/engine.smk"
include: "rules/benchmark.smk"
include: "rules/validate.smk"
include: "rules/debug.smk"
include: "rules/summary.smk"

# once every rule is defined: each file name a job would write fits the file system
# (trtflow/jobgraph.py), checked when the workflow starts rather than failing in a job
try:
    JOBS.check_file_names(CELLS)
except TrtflowError as error:
    raise WorkflowError(f"trtflow: {error}")
recover_corrupt_artifacts()


# the summary and the verdicts read a few small files: on a cluster they run on the submit host
# instead of waiting in a queue
localrules:
    all,
    summary,
    verdicts,


rule all:
    input:
        summary=SUMMARY_CSV,
        latency=LATENCY_CSV,
        profile=LAYER_PROFILE_CSV,
        plots=PLOTS,
        overview=OVERVIEW_HTML,
        verdicts=VERDICTS_JSON,
        planned=plan_remade,
    default_target: True


onstart:
    warn_of_a_cluster_fallback()


# every run ends with the report and then the verdict table (rules/common.smk: end_of_run; a run
# with nothing to do prints the table at exit, as Snakemake calls no hook then)
onsuccess:
    end_of_run()


onerror:
    # Some job failed: the summary, plots and report still cover every cell that finished, with
    # an `error` row (its first error line) for each other cell. When the summary job itself ran
    # in this run (only the verdicts failed), its files are complete and current already.
    if not os.path.exists(SUMMARY_CSV) or os.path.getmtime(SUMMARY_CSV) < RUN_STARTED:
        logger.info("trtflow: jobs failed; writing the summary of the cells that finished")
        cells = summary_cells()
        producers = {c[kind]: JOBS.producer(c[kind]).name for c in cells for kind in CELL_ARTIFACTS}
        subprocess.run([TORCH_PY, str(SCRIPTS / "summary.py"), "--cells", json.dumps(cells),
                        "--producers", json.dumps(producers),
                        "--summary", SUMMARY_CSV, "--latency", LATENCY_CSV,
                        "--latency-plot", PLOTS[0], "--accuracy-plot", PLOTS[1],
                        "--profile", LAYER_PROFILE_CSV, "--profile-plot", PLOTS[2],
                        "--slower-margin", str(CONFIG["benchmark"]["slower_margin"]),
                        "--overview", OVERVIEW_HTML, "--partial-marker", PARTIAL_MARKER,
                        "--run-started", str(RUN_STARTED), "--log", f"{LOGS}/summary-partial.log"],
                       check=False)
    # the verdicts of an earlier run must not stand beside this failed run's summary
    if os.path.exists(VERDICTS_JSON) and os.path.getmtime(VERDICTS_JSON) < RUN_STARTED:
        os.remove(VERDICTS_JSON)
        logger.info(f"trtflow: removed {VERDICTS_JSON} of an earlier run")
    end_of_run(failed=True)
