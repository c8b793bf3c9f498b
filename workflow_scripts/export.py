#!/usr/bin/env python3
"""Export stage: trained PyTorch model -> ONNX with named I/O and a dynamic batch axis."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def main(args) -> None:
    from trtflow.export import export_onnx
    from trtflow.io import stamp_provenance

    export_onnx(args.model, args.spec, args.weights, Path(args.output), Path(args.report),
                args.opset, args.exporter)
    stamp_provenance(args.report, args.provenance)


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--spec", required=True, type=cli.json_arg, help="the model's config entry")
    p.add_argument("--weights", required=True, help="state_dict from the weights stage")
    p.add_argument("--opset", type=int, required=True)
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--report", required=True)
    cli.run(main, p)
