#!/usr/bin/env python3
"""Validation stage: engine outputs vs the PyTorch reference, gated by per-precision tolerances.

The cell ends in a verdict (passed, failed, vacuous, unchecked), written to the output JSON; the
job itself succeeds, so the summary and report cover every cell, and the workflow's `verdicts`
rule then fails the run (validation.on_failure: fail) naming each cell that did not pass.
Runs under the backend's Python (tensorrt + numpy only for TensorRT)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def main(args) -> None:
    import logging

    from trtflow.io import load_npz, reference_part, read_json, write_json
    from trtflow.runners import get_backend
    from trtflow.runners.base import adapt_feed, infer_in_chunks
    from trtflow.validate import compare

    sidecar = read_json(args.sidecar)
    reference = load_npz(args.reference)
    inputs = reference_part(reference, "input")
    expected = reference_part(reference, "output")
    labels = list(reference["__labels__"]) if "__labels__" in reference else None
    profile = sidecar["profile"]
    with get_backend(args.backend).EngineRunner(Path(args.engine), Path(args.sidecar),
                                                **cli.runner_options(args)) as runner:
        inputs = adapt_feed(inputs, runner.inputs, f"engine {args.engine}")
        outputs = infer_in_chunks(runner, inputs, int(profile["max"]), int(profile["min"]))
    result = compare(outputs, expected, args.task, args.tolerances,
                     [str(s) for s in reference["__samples__"]], labels,
                     check_expected=args.check_expected_labels and labels is not None
                     and args.pretrained, detection_min_score=args.detection_min_score,
                     detection_match_fraction=args.detection_match_fraction,
                     precision=sidecar["precision"])
    where = f"{sidecar['model']} {sidecar['precision']} {sidecar['batch_profile']} ({args.backend})"
    log = logging.getLogger("validate")
    for row in result["predictions"]:
        log.info("%s: %s -> reference %s, engine %s%s", where, row["sample"], row["reference"],
                 row["engine"], f" (expected {row['expected']})" if "expected" in row else "")
    result.update({"model": sidecar["model"], "precision": sidecar["precision"],
                   "batch_profile": sidecar["batch_profile"], "backend": args.backend,
                   "engine": args.engine, "provenance": args.provenance})
    log.info("%s: %s (gates: %s)", where, result["verdict"], ", ".join(result["gates"]) or "none")
    for name, null in result["nulls"].items():
        log.info("%s: null engine '%s' %s", where, name, "passes every gate" if
                 null["passes_every_gate"] else "fails: " + "; ".join(null["failures"]))
    for line in result["failures"] + result["reference_problems"]:
        log.warning("%s: %s: %s", where, result["verdict"], line)
    write_json(args.output, result)


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--backend", required=True, choices=["onnxruntime", "tensorrt"])
    p.add_argument("--engine", required=True)
    p.add_argument("--sidecar", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--tolerances", type=cli.json_arg, required=True)
    p.add_argument("--check-expected-labels", action="store_true")
    p.add_argument("--detection-min-score", type=float, required=True,
                   help="task detection: confidence of the reference detections to reproduce")
    p.add_argument("--detection-match-fraction", type=float, required=True,
                   help="task detection: the matching detection may score down to this fraction "
                        "of --detection-min-score")
    p.add_argument("--pretrained", action="store_true", help="the weights are real, not random")
    p.add_argument("--options", type=cli.json_arg, required=True, help="runner options")
    cli.add_job_threads(p)
    p.add_argument("--output", required=True)
    cli.run(main, p)
