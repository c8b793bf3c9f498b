rule weights:
    """Fetch and check one model's weights (local checkpoint, built-in source or seeded random)."""
    input:
        weights_input,
    output:
        weights=WEIGHTS,
        meta=WEIGHTS_META,
    params:
        python=TORCH_PY,
        script=str(SCRIPTS / "weights.py"),
        spec=spec_json("weights"),
        model_code=model_code,
        cache=CONFIG["weights_cache"],
        provenance=provenance_of("weights"),
        producers=input_producers,
    log:
        f"{LOGS}/weights/{{model}}.log",
    benchmark:
        f"{TIMES}/weights/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "{params.python:q} {params.script:q} --model {wildcards.model:q} --spec {params.spec:q}"
        " --cache {params.cache:q} --output {output.weights:q} --metadata {output.meta:q} --provenance {params.provenance:q} --producers {params.producers:q} --log {log:q}"
