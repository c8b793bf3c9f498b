#!/usr/bin/env python3
"""Precision debugging of one int8 or fp16 cell (snakemake debug_precision): the layers whose
outputs depart from fp32 first, the nodes whose higher precision helps the cell's gates most, and
a keep_precision fallback list to layer over the run's config files. Simulated on ONNX Runtime on
the CPU: runs under the PyTorch-side Python, builds no engine."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def main(args) -> None:
    from trtflow import debug
    from trtflow.io import load_npz, read_json, reference_part, write_json

    arrays = load_npz(args.reference)
    count = min(int(args.settings["num_samples"]), len(arrays["__samples__"]))
    inputs = {k: v[:count] for k, v in reference_part(arrays, "input").items()}
    expected = {k: v[:count] for k, v in reference_part(arrays, "output").items()}
    labels = list(arrays["__labels__"]) if "__labels__" in arrays else None
    check = debug.CellCheck(
        task=args.task, tolerances=args.tolerances, precision=args.precision, reference=expected,
        sample_names=[str(s) for s in arrays["__samples__"][:count]], labels=labels,
        check_expected=args.check_expected_labels and labels is not None and args.pretrained,
        detection_min_score=args.detection_min_score,
        detection_match_fraction=args.detection_match_fraction)
    cell = debug.CellDebug(
        model=args.model, precision=args.precision, backend=args.backend, check=check,
        runtime=debug.Runtime(args.backend, args.engine_options, cli.job_threads(args)),
        keep_precision=args.keep_precision, settings=args.settings,
        int8_ops=_int8_ops(args.backend),
        engine_errors=debug.engine_gate_errors([read_json(v) for v in args.validations],
                                               args.tolerances))
    report = debug.debug_cell(cell, Path(args.patched), Path(args.graph), inputs,
                              stage_build=_stage_build(args))
    overlay = debug.fallback_overlay(args.model, args.precision, args.keep_precision,
                                     report["chosen"], args.backend)
    report.update({"fallback": overlay, "fallback_file": args.fallback,
                   "validations": args.validations, "provenance": args.provenance})
    write_json(args.output, report)
    debug.write_overlay(Path(args.fallback), overlay, _header(args, report))


def _int8_ops(backend: str):
    from trtflow.precision import INT8_OPS

    return INT8_OPS[backend]


def _stage_build(args):
    """The cell's graph with nodes added to its keep_precision, made as the precision stage makes
    it (its code, the rule's calibration settings and cached ranges)."""
    import functools

    from trtflow import debug

    @functools.lru_cache(maxsize=1)
    def calibration():  # the precision stage's samples (so its cached ranges), made once
        if args.precision != "int8":
            return None
        from trtflow.calibration import calibration_arrays

        return calibration_arrays(args.model, args.spec["inputs"], args.calibration["num_samples"],
                                  args.calibration["seed"], args.calibration.get("images"))

    def build(nodes, workdir):
        keep = debug.applied_keep_precision(args.keep_precision, args.precision, nodes)
        return debug.precision_stage_graph(args.model, args.precision, args.backend,
                                           Path(args.patched), keep, workdir, calibration(),
                                           args.calibration or None, args.int8_form)

    return build


def _header(args, report) -> list:
    """The overlay's comment: what it is, what the search found, how to apply it."""
    from trtflow.commands import snakemake_command

    final = report["final"]
    lines = [f"trtflow debug_precision: {args.model} {args.precision} ({args.backend}): "
             f"{report['status']}",
             f"simulated on {len(report['samples'])} validation samples: "
             f"{report['baseline']['verdict']} -> {final['verdict']} with "
             f"{len(report['chosen'])} more node(s) kept in higher precision"]
    if report["status"] in ("passes_already", "vacuous"):
        return lines + ["Nothing to add: this file only repeats the model's list.",
                        f"Details: {args.output}"]
    lines += [f"  keep: {node}" for node in report["chosen"]]
    lines += ["Apply it by layering it over the run's config files (Snakemake merges them key by "
              "key):", "  " + snakemake_command(["all"], {"default_config": args.configfiles,
                                                          "config": args.config_overrides},
                                                overlays=[args.fallback]),
              f"Details: {args.output}"]
    return lines


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--precision", required=True, choices=sorted(["int8", "fp16"]))
    p.add_argument("--backend", required=True, choices=["onnxruntime", "tensorrt"])
    p.add_argument("--task", required=True)
    p.add_argument("--tolerances", type=cli.json_arg, required=True, help="the cell's gates")
    p.add_argument("--keep-precision", type=cli.json_arg, default={},
                   help="the model's keep_precision lists now")
    p.add_argument("--settings", type=cli.json_arg, required=True,
                   help="num_samples, max_nodes, margin, report_layers, fp16_candidates")
    p.add_argument("--engine-options", type=cli.json_arg, default={},
                   help="ONNX Runtime engines: their session options")
    p.add_argument("--spec", type=cli.json_arg, required=True, help="the model's inputs")
    p.add_argument("--calibration", type=cli.json_arg, required=True,
                   help="int8: the calibration block (to build the graph with the fallback)")
    p.add_argument("--int8-form", required=True, help="ONNX Runtime's int8 form (trtflow/cpu.py)")
    p.add_argument("--patched", required=True, help="the fp32 (patched) graph")
    p.add_argument("--graph", required=True, help="the cell's int8 or fp16 graph")
    p.add_argument("--reference", required=True)
    p.add_argument("--validations", nargs="*", default=[],
                   help="the cell's validation JSONs: how far the engines are from passing")
    p.add_argument("--check-expected-labels", action="store_true")
    p.add_argument("--detection-min-score", type=float, required=True)
    p.add_argument("--detection-match-fraction", type=float, required=True)
    p.add_argument("--pretrained", action="store_true", help="the weights are real, not random")
    p.add_argument("--config-overrides", nargs="*", default=[],
                   help="the run's --config key=value overrides, for the command printed")
    p.add_argument("--configfiles", nargs="*", default=[],
                   help="the run's config files, for the overlay's how-to-apply line")
    cli.add_job_threads(p)
    p.add_argument("--output", required=True)
    p.add_argument("--fallback", required=True, help="the keep_precision overlay (YAML)")
    cli.run(main, p)
