rule precision:
    """The patched graph as fp32, fp16 (casts, fp32 I/O) or int8 (calibrated Q/DQ)."""
    input:
        onnx=PATCHED,
        # your calibration images: editing the folder recalibrates
        images=calibration_images,
    output:
        onnx=PRECISION_ONNX,
        report=PRECISION_REPORT,
    params:
        python=TORCH_PY,
        script=str(SCRIPTS / "precision.py"),
        # only what this precision uses: the calibration options matter to int8 alone
        inputs=spec_json("precision"),
        calibration=lambda wc: json.dumps(CONFIG["calibration"] if wc.precision == "int8" else {},
                                          sort_keys=True),
        keep_precision=kept_precision_json,
        backend=BACKEND.name,
        int8_form=lambda wc: BACKEND.info.get("int8_form", "") if wc.precision == "int8" else "",
        provenance=provenance_of("precision"),
        producers=input_producers,
    log:
        f"{LOGS}/precision/{{model}}-{GRAPHS_LABEL}-{{precision}}.log",
    benchmark:
        f"{TIMES}/precision/{{model}}-{GRAPHS_LABEL}-{{precision}}.tsv"
    conda:
        "../envs/onnx.yaml"
    shell:
        "{params.python:q} {params.script:q} --model {wildcards.model:q}"
        " --precision {wildcards.precision:q} --backend {params.backend:q} --spec {params.inputs:q}"
        " --int8-form={params.int8_form:q}"
        " --calibration {params.calibration:q} --keep-precision {params.keep_precision:q} --input {input.onnx:q} --output {output.onnx:q}"
        " --report {output.report:q} --provenance {params.provenance:q} --producers {params.producers:q} --log {log:q}"
