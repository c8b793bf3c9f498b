rule reference:
    """The validation inputs and PyTorch's outputs for them (computed where the engines run)."""
    input:
        weights=WEIGHTS,
    output:
        REFERENCE,
    params:
        python=TORCH_PY,
        script=str(SCRIPTS / "reference.py"),
        spec=spec_json("reference"),
        model_code=model_code,
        device=BACKEND.device,
        num_samples=CONFIG["validation"]["num_samples"],
        requires=REQUIRES_TORCH,
        provenance=provenance_of("reference"),
        producers=input_producers,
    resources:
        gpu=1 if ON_GPU else 0,
    log:
        f"{LOGS}/reference/{{model}}-{BACKEND.device}.log",
    benchmark:
        f"{TIMES}/reference/{{model}}-{BACKEND.device}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "{params.python:q} {params.script:q} --model {wildcards.model:q} --spec {params.spec:q}"
        " --weights {input.weights:q} --device {params.device:q}"
        " --num-samples {params.num_samples:q} --output {output:q} --requires {params.requires:q} --provenance {params.provenance:q} --producers {params.producers:q} --log {log:q}"


rule validate:
    """Engine outputs vs PyTorch: max-abs, rel. L2, cosine, top-1/top-5, gated per precision."""
    input:
        engine=ENGINE,
        sidecar=ENGINE_META,
        reference=REFERENCE,
    output:
        VALIDATION,
    params:
        python=BACKEND_PY,
        script=str(SCRIPTS / "validate.py"),
        backend=BACKEND.name,
        task=lambda wc: model_spec(wc.model)["task"],
        tolerances=lambda wc: json.dumps(model_tolerances(CONFIG, wc.model, wc.precision),
                                         sort_keys=True),
        flags=validate_flags,
        options=runner_options(),
        requires=REQUIRES_BACKEND,
        provenance=provenance_of("validate"),
        producers=input_producers,
    resources:
        gpu=1 if ON_GPU else 0,
    log:
        f"{LOGS}/validate/{{model}}-{TAG}-{{precision}}-{{profile}}.log",
    benchmark:
        f"{TIMES}/validate/{{model}}-{TAG}-{{precision}}-{{profile}}.tsv"
    conda:
        "../envs/tensorrt.yaml" if ON_GPU else "../envs/onnx.yaml"
    shell:
        "{params.python:q} {params.script:q} --backend {params.backend:q} --engine {input.engine:q}"
        " --sidecar {input.sidecar:q} --reference {input.reference:q} --task {params.task:q}"
        " --tolerances {params.tolerances:q} {params.flags:q}"
        " --options {params.options:q} --job-threads {threads} --output {output:q} --requires {params.requires:q} --provenance {params.provenance:q} --producers {params.producers:q} --log {log:q}"
