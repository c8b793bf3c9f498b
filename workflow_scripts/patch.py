#!/usr/bin/env python3
"""Patch stage: onnx-graphsurgeon passes over the exported ONNX, with a JSON report."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def main(args) -> None:
    from trtflow.io import stamp_provenance
    from trtflow.patch import patch_onnx

    patch_onnx(args.model, Path(args.input), Path(args.output), Path(args.report), args.backend,
               args.options, args.backend_version)
    stamp_provenance(args.report, args.provenance)


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--backend", required=True, choices=["onnxruntime", "tensorrt"])
    p.add_argument("--backend-version", default="",
                   help="e.g. the TensorRT version: some passes apply only to some versions")
    p.add_argument("--options", required=True, type=cli.json_arg,
                   help='patch options, e.g. {"passes": ["fold_constants", "cleanup"]}')
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--report", required=True)
    cli.run(main, p)
