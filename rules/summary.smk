rule summary:
    """results/summary.csv (one row per cell, with its verdict), results/latency.csv, the plots."""
    input:
        [cell_paths(c)[k] for c in CELLS for k in CELL_ARTIFACTS],
    output:
        summary=report(SUMMARY_CSV, caption="../report/summary.rst", category="Summary"),
        latency=LATENCY_CSV,
        latency_plot=report(PLOTS[0], caption="../report/latency.rst", category="Plots"),
        accuracy_plot=report(PLOTS[1], caption="../report/accuracy.rst", category="Plots"),
        profile=LAYER_PROFILE_CSV,
        profile_plot=report(PLOTS[2], caption="../report/layer_time.rst", category="Plots"),
        # the landing page: the report's first screen includes it (report/workflow.rst)
        overview=report(OVERVIEW_HTML, caption="../report/overview.rst", category="Summary"),
    params:
        python=TORCH_PY,
        script=str(SCRIPTS / "summary.py"),
        cells=summary_cells_json,
        slower_margin=CONFIG["benchmark"]["slower_margin"],
        provenance=provenance_of("summary"),
        producers=input_producers,
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{TIMES}/summary.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "{params.python:q} {params.script:q} --cells {params.cells:q} --summary {output.summary:q}"
        " --latency {output.latency:q} --latency-plot {output.latency_plot:q}"
        " --accuracy-plot {output.accuracy_plot:q} --profile {output.profile:q}"
        " --profile-plot {output.profile_plot:q} --slower-margin {params.slower_margin}"
        " --overview {output.overview:q} --provenance {params.provenance:q}"
        " --producers {params.producers:q} --log {log:q}"


rule verdicts:
    """Fails the run (validation.on_failure: fail) when a cell is failed, vacuous or error, after
    the summary is written; its output records the verdict counts."""
    input:
        SUMMARY_CSV,
    output:
        VERDICTS_JSON,
    params:
        python=TORCH_PY,
        script=str(SCRIPTS / "verdicts.py"),
        on_failure=CONFIG["validation"]["on_failure"],
        # named in the hint for failed int8/fp16 cells (rules/debug.smk)
        debug_fallbacks=json.dumps({f"{m} {p}": DEBUG_FALLBACK.format(model=m, precision=p)
                                    for m, p in DEBUG_CELLS}, sort_keys=True),
        # the hint's commands carry this run's config (trtflow.commands)
        rerun=json.dumps(RERUN, sort_keys=True),
        provenance=provenance_of("verdicts"),
        producers=input_producers,
    log:
        f"{LOGS}/verdicts.log",
    benchmark:
        f"{TIMES}/verdicts.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "{params.python:q} {params.script:q} --summary {input:q} --on-failure {params.on_failure:q}"
        " --debug-fallbacks {params.debug_fallbacks:q} --rerun {params.rerun:q} --output {output:q} --provenance {params.provenance:q} --producers {params.producers:q} --log {log:q}"
