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
    log:
        f"{LOGS}/patch/{{model}}-{BACKEND.name}.log",
    benchmark:
        f"{TIMES}/patch/{{model}}-{BACKEND.name}.tsv"
    conda:
        "../envs/onnx.yaml"
    shell:
        "{params.python:q} {params.script:q} --model {wildcards.model} --backend {params.backend}"
        " --backend-version '{params.backend_version}'"
        " --options {params.options:q} --input {input.onnx} --output {output.onnx}"
        " --report {output.report} --provenance {params.provenance} --log {log}"
