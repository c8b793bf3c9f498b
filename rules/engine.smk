rule engine:
    """One engine per model x precision x batch profile, built under the backend's Python."""
    input:
        unpack(int8_speed_inputs),
        onnx=PRECISION_ONNX,
    output:
        engine=ENGINE,
        sidecar=ENGINE_META,
    params:
        python=BACKEND_PY,
        script=str(SCRIPTS / "engine.py"),
        backend=BACKEND.name,
        profile=profile_json,
        options=engine_options,
        requires=REQUIRES_BACKEND,
        provenance=provenance_of("engine"),
        producers=input_producers,
    resources:
        gpu=1 if ON_GPU else 0,
    log:
        f"{LOGS}/engine/{{model}}-{TAG}-{{precision}}-{{profile}}.log",
    benchmark:
        f"{TIMES}/engine/{{model}}-{TAG}-{{precision}}-{{profile}}.tsv"
    conda:
        "../envs/tensorrt.yaml" if ON_GPU else "../envs/onnx.yaml"
    shell:
        "{params.python:q} {params.script:q} --backend {params.backend:q} --model {wildcards.model:q}"
        " --precision {wildcards.precision:q} --profile-name {wildcards.profile:q}"
        " --profile {params.profile:q} --options {params.options:q} --input {input.onnx:q}"
        " --output {output.engine:q} --sidecar {output.sidecar:q} --requires {params.requires:q} --provenance {params.provenance:q} --producers {params.producers:q} --log {log:q}"
