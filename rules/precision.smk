rule precision:
    """The patched graph as fp32, fp16 (casts, fp32 I/O) or int8 (calibrated Q/DQ)."""
    input:
        onnx=PATCHED,
    output:
        onnx=PRECISION_ONNX,
        report=R + f"/onnx/{{model}}/{BACKEND.name}/{{precision}}.json",
    params:
        # only what this precision uses: the calibration options matter to int8 alone
        inputs=spec_json("precision"),
        calibration=lambda wc: json.dumps(CONFIG["calibration"] if wc.precision == "int8" else {},
                                          sort_keys=True),
        backend=BACKEND.name,
        code=code_hash("precision"),
    log:
        LOGS + f"/precision/{{model}}-{BACKEND.name}-{{precision}}.log",
    benchmark:
        TIMES + f"/precision/{{model}}-{BACKEND.name}-{{precision}}.tsv"
    conda:
        "../envs/onnx.yaml"
    shell:
        "{TORCH_PY} {SCRIPTS}/precision.py --model {wildcards.model}"
        " --precision {wildcards.precision} --backend {params.backend} --spec {params.inputs:q}"
        " --calibration {params.calibration:q} --input {input.onnx} --output {output.onnx}"
        " --report {output.report} --log {log}"
