def engine_options(wildcards):
    """Backend build options from config; TensorRT builds share one timing cache per TRT+GPU."""
    if not ON_GPU:
        return json.dumps(CONFIG["onnxruntime"], sort_keys=True)
    options = {k: v for k, v in CONFIG["tensorrt"].items() if k not in ("python", "cuda_graph")}
    if options.pop("timing_cache"):
        options["timing_cache_path"] = R + f"/engines/timing-cache-{TAG}.bin"
    return json.dumps(options, sort_keys=True)


rule engine:
    """One engine per model x precision x batch profile, built under the backend's Python."""
    input:
        onnx=PRECISION_ONNX,
    output:
        engine=ENGINE,
        sidecar=ENGINE_META,
    params:
        backend=BACKEND.name,
        profile=profile_json,
        options=engine_options,
        provenance=provenance_of("engine"),
    resources:
        gpu=1 if ON_GPU else 0,
    log:
        LOGS + f"/engine/{{model}}-{TAG}-{{precision}}-{{profile}}.log",
    benchmark:
        TIMES + f"/engine/{{model}}-{TAG}-{{precision}}-{{profile}}.tsv"
    conda:
        "../envs/tensorrt.yaml" if ON_GPU else "../envs/onnx.yaml"
    shell:
        "{BACKEND_PY} {SCRIPTS}/engine.py --backend {params.backend} --model {wildcards.model}"
        " --precision {wildcards.precision} --profile-name {wildcards.profile}"
        " --profile {params.profile:q} --options {params.options:q} --input {input.onnx}"
        " --output {output.engine} --sidecar {output.sidecar} --provenance {params.provenance} --log {log}"
