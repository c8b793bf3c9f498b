#!/usr/bin/env python3
"""Engine stage: build one engine (precision x batch profile) for the backend.

Runs under the backend's Python: for TensorRT that may be a Python with tensorrt and numpy only.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def main(args) -> None:
    from trtflow.io import stamp_provenance
    from trtflow.runners import get_backend

    get_backend(args.backend).build_engine(
        Path(args.input), Path(args.output), Path(args.sidecar), model=args.model,
        precision=args.precision, batch_profile=args.profile, profile_name=args.profile_name,
        options=args.options)
    stamp_provenance(args.sidecar, args.provenance)


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--backend", required=True, choices=["onnxruntime", "tensorrt"])
    p.add_argument("--model", required=True)
    p.add_argument("--precision", required=True, choices=["fp32", "fp16", "int8"])
    p.add_argument("--profile-name", required=True)
    p.add_argument("--profile", required=True, type=cli.json_arg, help='{"min": 1, "opt": 8, "max": 16}')
    p.add_argument("--options", type=cli.json_arg, required=True, help="backend options from config")
    p.add_argument("--input", required=True, help="precision ONNX")
    p.add_argument("--output", required=True, help="engine file")
    p.add_argument("--sidecar", required=True, help="engine metadata JSON")
    cli.run(main, p)
