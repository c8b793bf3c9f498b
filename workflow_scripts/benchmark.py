#!/usr/bin/env python3
"""Benchmark stage: engine latency percentiles and throughput at the profile's min/opt/max batch,
the engine's layer profile, and the engine and its PyTorch model timed side by side at the opt
batch (trtflow.side_by_side).

Runs under the backend's Python (tensorrt + numpy only for TensorRT); PyTorch runs in a worker
under the PyTorch Python."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def timer_args(args):
    """trtflow.side_by_side.TorchTimer's arguments, or None where no PyTorch model is given."""
    if not args.timer:
        return None
    return {**args.timer, "threads": args.timer["threads"] or cli.job_threads(args),
            "python": args.timer_python, "weights": args.timer_weights,
            "reference": args.reference, "log_path": args.log}


def main(args) -> None:
    from trtflow.benchmark import layer_profile, measure, profile_batches
    from trtflow.io import load_npz, reference_part, read_json, write_json
    from trtflow.data import batch_of
    from trtflow.runners import get_backend
    from trtflow.runners.base import adapt_feed
    from trtflow.side_by_side import side_by_side

    sidecar = read_json(args.sidecar)
    reference = load_npz(args.reference)
    inputs = reference_part(reference, "input")
    backend = get_backend(args.backend)
    options = cli.runner_options(args)
    with backend.EngineRunner(Path(args.engine), Path(args.sidecar), **options) as runner:
        inputs = adapt_feed(inputs, runner.inputs, f"engine {args.engine}")
        batches = measure(runner, inputs, profile_batches(sidecar["profile"]), args.settings)
        opt = int(sidecar["profile"]["opt"])
        at_opt = next(b for b in batches if b["batch"] == opt)
        paired = side_by_side(runner, batch_of(inputs, opt), at_opt.get("timing_mode"), opt,
                              args.settings, timer_args(args))
        profile = layer_profile(runner, inputs, opt, int(args.settings["profile_runs"]))
    write_json(args.output, {"engine": args.engine, "settings": args.settings, "runner": options,
                             "sidecar": sidecar, "batches": batches, "layer_profile": profile,
                             "side_by_side": paired,
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
    p.add_argument("--timer", type=cli.json_arg, default=None,
                   help="the PyTorch model timed beside the engine: model, spec, device, threads "
                        "(trtflow.side_by_side.TorchTimer); none: not timed")
    p.add_argument("--timer-python", default=sys.executable, help="the PyTorch Python")
    p.add_argument("--timer-weights", help="the model's state_dict (the weights stage's)")
    cli.add_job_threads(p)
    p.add_argument("--output", required=True)
    cli.run(main, p)
