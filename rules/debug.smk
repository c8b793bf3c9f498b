# Precision debugging (trtflow/debug.py), run on demand: `snakemake debug_precision` for every
# int8 and fp16 cell of the matrix, or one cell's file. Not part of `all`. Included before the
# summary rules: the verdicts name the debug files of failed cells.
from trtflow.debug import FALLBACK_KEY

DEBUG_REPORT = f"{R}/debug/{{model}}/{GRAPHS}/{{precision}}.json"
DEBUG_FALLBACK = f"{R}/debug/{{model}}/{GRAPHS}/{{precision}}.fallback.yaml"
# what the search may do (config debug_precision, defaults in the schema)
DEBUG_SETTINGS = json.dumps(CONFIG["debug_precision"], sort_keys=True)
# the cells a fallback list can help: those whose precision has a keep_precision key above it
DEBUG_CELLS = sorted({(c.model, c.precision) for c in CELLS if c.precision in FALLBACK_KEY})


localrules:
    debug_precision,


rule debug_precision:
    """Every int8 and fp16 cell's layer comparison and fallback list (results/debug/)."""
    input:
        [DEBUG_FALLBACK.format(model=m, precision=p) for m, p in DEBUG_CELLS],


rule debug_precision_cell:
    """One cell's graph against fp32, layer by layer, and the keep_precision list that makes it
    pass, simulated on ONNX Runtime (no engine build)."""
    input:
        patched=PATCHED,
        graph=PRECISION_ONNX,
        reference=REFERENCE,
        # the cell's engines' validation JSONs (one per batch profile): how far they are from
        # passing, which the simulation is scaled to
        validations=lambda wc: [
            VALIDATION.format(model=wc.model, precision=wc.precision, profile=c.batch_profile)
            for c in CELLS if (c.model, c.precision) == (wc.model, wc.precision)],
    output:
        report=DEBUG_REPORT,
        fallback=DEBUG_FALLBACK,
    wildcard_constraints:
        precision="|".join(FALLBACK_KEY),
    params:
        python=TORCH_PY,
        script=str(SCRIPTS / "debug_precision.py"),
        backend=BACKEND.name,
        task=lambda wc: model_spec(wc.model)["task"],
        tolerances=lambda wc: json.dumps(model_tolerances(CONFIG, wc.model, wc.precision),
                                         sort_keys=True),
        flags=validate_flags,
        keep_precision=kept_precision_json,
        settings=DEBUG_SETTINGS,
        # ONNX Runtime cells are simulated with their engines' session options
        engine_options=lambda wc: "{}" if ON_GPU else engine_options(wc),
        # to make the graph with a fallback as the precision stage does
        inputs=spec_json("precision"),
        calibration=lambda wc: json.dumps(CONFIG["calibration"] if wc.precision == "int8" else {},
                                          sort_keys=True),
        int8_form=lambda wc: BACKEND.info.get("int8_form", "") if wc.precision == "int8" else "",
        configfiles=[str(f) for f in workflow.configfiles],
        config_overrides=RERUN["config"],
        provenance=provenance_of("debug_precision_cell"),
        producers=input_producers,
    threads: all_cores
    log:
        f"{LOGS}/debug_precision/{{model}}-{GRAPHS_LABEL}-{{precision}}.log",
    benchmark:
        f"{TIMES}/debug_precision/{{model}}-{GRAPHS_LABEL}-{{precision}}.tsv"
    conda:
        "../envs/onnx.yaml"
    shell:
        "{params.python:q} {params.script:q} --model {wildcards.model:q}"
        " --precision {wildcards.precision:q} --backend {params.backend:q} --task {params.task:q}"
        " --tolerances {params.tolerances:q} {params.flags:q}"
        " --keep-precision {params.keep_precision:q} --settings {params.settings:q}"
        " --engine-options {params.engine_options:q} --spec {params.inputs:q}"
        " --calibration {params.calibration:q} --int8-form={params.int8_form:q}"
        " --patched {input.patched:q} --graph {input.graph:q} --reference {input.reference:q}"
        " --validations {input.validations:q} --configfiles {params.configfiles:q}"
        " --config-overrides {params.config_overrides:q}"
        " --job-threads {threads} --output {output.report:q} --fallback {output.fallback:q}"
        " --provenance {params.provenance:q} --producers {params.producers:q} --log {log:q}"
