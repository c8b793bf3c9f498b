rule patch:
    """onnx-graphsurgeon passes (fold constants, cleanup, toposort, int64 inputs, shapes)."""
    input:
        onnx=EXPORTED,
    output:
        onnx=PATCHED,
        report=f"{R}/onnx/{{model}}/{BACKEND.name}/patch.json",
    params:
        python=TORCH_PY,
        script=str(SCRIPTS / "patch.py"),
        options=lambda wc: json.dumps(model_patch_options(CONFIG, wc.model), sort_keys=True),
        backend=BACKEND.name,
        # the TensorRT version decides version-specific passes; ONNX Runtime's does not matter
        backend_version=BACKEND.info.get("tensorrt", ""),
        provenance=provenance_of("patch"),
        producers=input_producers,
    log:
        f"{LOGS}/patch/{{model}}-{BACKEND.name}.log",
    benchmark:
        f"{TIMES}/patch/{{model}}-{BACKEND.name}.tsv"
    conda:
        "../envs/onnx.yaml"
    shell:
        "{params.python:q} {params.script:q} --model {wildcards.model:q} --backend {params.backend:q}"
        " --backend-version={params.backend_version:q}"
        " --options {params.options:q} --input {input.onnx:q} --output {output.onnx:q}"
        " --report {output.report:q} --provenance {params.provenance:q} --producers {params.producers:q} --log {log:q}"
