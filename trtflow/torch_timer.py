"""PyTorch eager fp32 timed on request, for trtflow.side_by_side: `python -m trtflow.torch_timer`
under the PyTorch Python. It loads the model and the reference inputs, says it is ready on one
JSON line, then answers each request line ({"batch", "warmup", "iterations", "seconds"}) with
{"times_ms": [...]}, until its input closes. A failure is one {"error": ...} line."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence


def protocol_channel():
    """The answers' channel: the original stdout. Everything else that writes to stdout (a
    model factory's print, a native library) goes to stderr instead, so that it cannot corrupt
    an answer."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


ANSWERS = None


def answer(value: Dict[str, Any]) -> None:
    ANSWERS.write(json.dumps(value) + "\n")
    ANSWERS.flush()


def serve(args: argparse.Namespace) -> None:
    import torch

    from .contention import CpuWait
    from .data import batch_of
    from .io import load_npz, reference_part
    from .models import eval_wrapper, load_trained_model
    from .runners.torch import TorchRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = json.loads(args.spec)
    inputs = reference_part(load_npz(args.reference), "input")
    module = eval_wrapper(load_trained_model(args.model, spec, args.weights))
    runner = TorchRunner(module, spec["outputs"], args.device, "fp32").load()
    answer({"ready": True, "variant": runner.name, "torch": torch.__version__,
            "threads": torch.get_num_threads()})
    for line in sys.stdin:
        request = json.loads(line)
        feed = batch_of(inputs, int(request["batch"]))
        waited = CpuWait()
        times = runner.time(feed, int(request["warmup"]), int(request["iterations"]),
                            float(request["seconds"]))
        answer({"times_ms": times, "cpu_times": waited.times()})


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("--model", "--spec", "--weights", "--reference", "--device"):
        parser.add_argument(name, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    parser.add_argument("--log", help="append the log here")
    args = parser.parse_args(argv)
    global ANSWERS
    ANSWERS = protocol_channel()
    from .cli import setup_logging

    setup_logging(args.log)
    try:
        serve(args)
    except Exception as exc:  # the benchmark keeps its engine timing and says why
        answer({"error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
