#!/usr/bin/env python3
"""Baseline stage: PyTorch eager (and optionally torch.compile) latency at a profile's batches,
on the same inputs the engines are timed on."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def variants(device: str, torch_compile: bool):
    """(precision, compiled) pairs: fp16 is meaningful on a GPU only, and torch.compile is timed
    at fp16, PyTorch's fastest configuration there (each compile costs about a minute)."""
    chosen = [("fp32", False)]
    if device != "cpu":
        chosen.append(("fp16", False))
        if torch_compile:
            chosen.append(("fp16", True))
    return chosen


def main(args) -> None:
    import torch

    from trtflow.benchmark import measure, profile_batches
    from trtflow.io import load_npz, reference_part, write_json
    from trtflow.models import eval_wrapper, load_trained_model
    from trtflow.runners.torch import TorchRunner

    torch.set_num_threads(args.threads or cli.job_threads(args))
    reference = load_npz(args.reference)
    inputs = reference_part(reference, "input")
    results = []
    for precision, compiled in variants(args.device, args.settings.get("torch_compile", False)):
        module = eval_wrapper(load_trained_model(args.model, args.spec, args.weights))
        runner = TorchRunner(module, args.spec["outputs"], args.device, precision, compiled).load()
        results.append({"variant": runner.name, "precision": precision, "compiled": compiled,
                        "batches": measure(runner, inputs, profile_batches(args.profile),
                                           args.settings)})
    device_name = torch.cuda.get_device_name() if args.device != "cpu" else "cpu"
    write_json(args.output, {"model": args.model, "device": args.device, "device_name": device_name,
                             "torch": torch.__version__, "threads": torch.get_num_threads(),
                             "python": sys.version.split()[0],
                             "profile": args.profile, "variants": results,
                             "provenance": args.provenance})


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--spec", required=True, type=cli.json_arg)
    p.add_argument("--weights", required=True)
    p.add_argument("--reference", required=True, help="reference .npz (its inputs are timed)")
    p.add_argument("--device", required=True, help="cpu or cuda")
    p.add_argument("--profile", required=True, type=cli.json_arg)
    p.add_argument("--settings", type=cli.json_arg, required=True,
                   help="benchmark settings (warmup, iterations, max_seconds, torch_compile)")
    p.add_argument("--threads", type=int, required=True, help="torch CPU threads (0: the job's)")
    cli.add_job_threads(p)
    p.add_argument("--output", required=True)
    cli.run(main, p)
