# Timing jobs take every core (threads: all_cores) so that no other job runs beside them and
# the engine and PyTorch numbers of one run are measured under the same conditions.


rule baseline:
    """PyTorch eager (and torch.compile on GPU) at the profile's batches, same inputs as engines."""
    input:
        weights=WEIGHTS,
        reference=REFERENCE,
    output:
        BASELINE,
    params:
        python=TORCH_PY,
        script=str(SCRIPTS / "baseline.py"),
        spec=spec_json("baseline"),
        model_code=model_code,
        profile=profile_json,
        device=BACKEND.device,
        settings=timing_settings("side_by_side_pairs"),
        torch_threads=CONFIG["onnxruntime"]["intra_op_threads"],
        requires=REQUIRES_TORCH,
        provenance=provenance_of("baseline"),
        producers=input_producers,
    threads: all_cores
    resources:
        gpu=1 if ON_GPU else 0,
    log:
        f"{LOGS}/baseline/{{model}}-{BACKEND.device}-{{profile}}.log",
    benchmark:
        f"{TIMES}/baseline/{{model}}-{BACKEND.device}-{{profile}}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "{params.python:q} {params.script:q} --model {wildcards.model:q} --spec {params.spec:q}"
        " --weights {input.weights:q} --reference {input.reference:q} --device {params.device:q}"
        " --profile {params.profile:q} --settings {params.settings:q}"
        " --threads {params.torch_threads:q} --job-threads {threads} --output {output:q} --requires {params.requires:q} --provenance {params.provenance:q} --producers {params.producers:q} --log {log:q}"


rule benchmark:
    """Engine latency (p50/p90/p99/mean) and throughput at the profile's min/opt/max batch, and
    the engine and its PyTorch model timed in turn at the opt batch (trtflow/side_by_side.py)."""
    input:
        engine=ENGINE,
        sidecar=ENGINE_META,
        reference=REFERENCE,
        weights=WEIGHTS,
    output:
        BENCHMARK,
    params:
        python=BACKEND_PY,
        script=str(SCRIPTS / "benchmark.py"),
        backend=BACKEND.name,
        settings=TIMING_SETTINGS,
        options=runner_options(),
        timer=torch_timer_json,
        timer_python=TORCH_PY,
        workflow_env=WORKFLOW_ENV,
        requires=REQUIRES_BACKEND,
        provenance=provenance_of("benchmark"),
        producers=input_producers,
    threads: all_cores
    resources:
        gpu=1 if ON_GPU else 0,
    log:
        f"{LOGS}/benchmark/{{model}}-{TAG}-{{precision}}-{{profile}}.log",
    benchmark:
        f"{TIMES}/benchmark/{{model}}-{TAG}-{{precision}}-{{profile}}.tsv"
    conda:
        "../envs/tensorrt.yaml" if ON_GPU else "../envs/onnx.yaml"
    shell:
        "{params.workflow_env} {params.python:q} {params.script:q} --backend {params.backend:q}"
        " --engine {input.engine:q}"
        " --sidecar {input.sidecar:q} --reference {input.reference:q} --settings {params.settings:q}"
        " --options {params.options:q} --timer {params.timer:q} --timer-python {params.timer_python:q}"
        " --timer-weights {input.weights:q}"
        " --job-threads {threads} --output {output:q} --requires {params.requires:q} --provenance {params.provenance:q} --producers {params.producers:q} --log {log:q}"
