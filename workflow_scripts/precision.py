#!/usr/bin/env python3
"""Precision stage: the patched ONNX as an fp32, fp16 or int8 (Q/DQ, calibrated) graph."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def main(args) -> None:
    from trtflow.io import stamp_provenance
    from trtflow.calibration import calibration_arrays
    from trtflow.precision import make_precision

    calibration = None
    if args.precision == "int8":  # the rule passes the calibration options to int8 alone
        calibration = calibration_arrays(args.model, args.spec["inputs"],
                                         args.calibration["num_samples"], args.calibration["seed"],
                                         args.calibration.get("images"))
    make_precision(args.model, args.precision, Path(args.input), Path(args.output),
                   Path(args.report), args.backend, calibration, args.calibration or None,
                   args.int8_form, args.keep_precision)
    stamp_provenance(args.report, args.provenance)


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--precision", required=True, choices=["fp32", "fp16", "int8"])
    p.add_argument("--backend", required=True, choices=["onnxruntime", "tensorrt"])
    p.add_argument("--spec", required=True, type=cli.json_arg, help="the model's config entry")
    p.add_argument("--calibration", type=cli.json_arg, required=True,
                   help="calibration options (config calibration block)")
    p.add_argument("--keep-precision", type=cli.json_arg, default={},
                   help="the model's keep_precision lists (mixed precision)")
    p.add_argument("--int8-form", required=True,
                   help="ONNX Runtime's int8 form for the target CPU (trtflow/cpu.py)")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--report", required=True)
    cli.run(main, p)
