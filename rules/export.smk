rule export:
    """torch.onnx.export with named I/O and a dynamic batch axis, model in eval mode."""
    input:
        weights=WEIGHTS,
    output:
        onnx=EXPORTED,
        report=f"{R}/onnx/{{model}}/export.json",
    params:
        python=TORCH_PY,
        script=str(SCRIPTS / "export.py"),
        spec=spec_json("export"),
        model_code=model_code,
        opset=lambda wc: model_opset(CONFIG, wc.model),
        exporter=CONFIG["export"]["exporter"],
        provenance=provenance_of("export"),
        producers=input_producers,
    log:
        f"{LOGS}/export/{{model}}.log",
    benchmark:
        f"{TIMES}/export/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "{params.python:q} {params.script:q} --model {wildcards.model:q} --spec {params.spec:q}"
        " --weights {input.weights:q} --opset {params.opset:q} --exporter {params.exporter:q}"
        " --output {output.onnx:q} --report {output.report:q} --provenance {params.provenance:q} --producers {params.producers:q} --log {log:q}"
