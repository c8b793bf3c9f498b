rule summary:
    """results/summary.csv (one row per cell), results/latency.csv and the two report plots."""
    input:
        [cell_paths(c)[k] for c in CELLS for k in ("benchmark", "validation", "baseline", "weights")],
    output:
        summary=report(SUMMARY_CSV, caption="../report/summary.rst", category="Summary"),
        latency=LATENCY_CSV,
        latency_plot=report(PLOTS[0], caption="../report/latency.rst", category="Plots"),
        accuracy_plot=report(PLOTS[1], caption="../report/accuracy.rst", category="Plots"),
    params:
        cells=json.dumps([cell_paths(c) for c in CELLS]),
        code=code_hash("summary"),
    log:
        LOGS + "/summary.log",
    benchmark:
        TIMES + "/summary.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "{TORCH_PY} {SCRIPTS}/summary.py --cells {params.cells:q} --summary {output.summary}"
        " --latency {output.latency} --latency-plot {output.latency_plot}"
        " --accuracy-plot {output.accuracy_plot} --log {log}"
