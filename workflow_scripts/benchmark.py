#!/usr/bin/env python3
"""Benchmark stage: engine latency percentiles and throughput at the profile's min/opt/max batch.

Runs under the backend's Python (tensorrt + numpy only for TensorRT)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def main(args) -> None:
    from trtflow.benchmark import layer_profile, measure, profile_batches
    from trtflow.io import load_npz, reference_part, read_json, write_json
    from trtflow.runners import get_backend
    from trtflow.runners.base import adapt_feed

    sidecar = read_json(args.sidecar)
    reference = load_npz(args.reference)
    inputs = reference_part(reference, "input")
    backend = get_backend(args.backend)
    options = cli.runner_options(args)
    with backend.EngineRunner(Path(args.engine), Path(args.sidecar), **options) as runner:
        inputs = adapt_feed(inputs, runner.inputs, f"engine {args.engine}")
        batches = measure(runner, inputs, profile_batches(sidecar["profile"]), args.settings)
        profile = layer_profile(runner, inputs, int(sidecar["profile"]["opt"]),
                                int(args.settings["profile_runs"]))
    write_json(args.output, {"engine": args.engine, "settings": args.settings, "runner": options,
                             "sidecar": sidecar, "batches": batches, "layer_profile": profile,
                             "provenance": args.provenance})


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--backend", required=True, choices=["onnxruntime", "tensorrt"])
    p.add_argument("--engine", required=True)
    p.add_argument("--sidecar", required=True)
    p.add_argument("--reference", required=True, help="reference .npz (its inputs are timed)")
    p.add_argument("--settings", type=cli.json_arg, required=True,
                   help="benchmark settings (warmup, iterations, max_seconds)")
    p.add_argument("--options", type=cli.json_arg, required=True, help="runner options")
    cli.add_job_threads(p)
    p.add_argument("--output", required=True)
    cli.run(main, p)
