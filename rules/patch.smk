rule patch:
    """onnx-graphsurgeon passes (fold constants, cleanup, toposort, int64 inputs, shapes)."""
    input:
        onnx=EXPORTED,
    output:
        onnx=PATCHED,
        report=R + f"/onnx/{{model}}/{BACKEND.name}/patch.json",
    params:
        options=lambda wc: json.dumps(model_patch_options(CONFIG, wc.model), sort_keys=True),
        backend=BACKEND.name,
        # the TensorRT version decides version-specific passes; ONNX Runtime's does not matter
        backend_version=BACKEND.info.get("tensorrt", ""),
        provenance=provenance_of("patch"),
    log:
        LOGS + f"/patch/{{model}}-{BACKEND.name}.log",
    benchmark:
        TIMES + f"/patch/{{model}}-{BACKEND.name}.tsv"
    conda:
        "../envs/onnx.yaml"
    shell:
        "{TORCH_PY} {SCRIPTS}/patch.py --model {wildcards.model} --backend {params.backend}"
        " --backend-version '{params.backend_version}'"
        " --options {params.options:q} --input {input.onnx} --output {output.onnx}"
        " --report {output.report} --provenance {params.provenance} --log {log}"
