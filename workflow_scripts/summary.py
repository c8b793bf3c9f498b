#!/usr/bin/env python3
"""Summary stage: results/summary.csv (one row per cell), the long latency table and the plots."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def main(args) -> None:
    from trtflow import summary

    summary.summarize(args.cells, Path(args.summary), Path(args.latency))
    if args.latency_plot:
        summary.plot_latency_vs_batch(Path(args.latency), Path(args.latency_plot))
    if args.accuracy_plot:
        summary.plot_accuracy_vs_speed(Path(args.summary), Path(args.accuracy_plot))


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--cells", required=True, type=cli.json_arg,
                   help="JSON list: {model, precision, batch_profile, benchmark, validation, "
                        "baseline, weights} per cell")
    p.add_argument("--summary", required=True)
    p.add_argument("--latency", required=True)
    p.add_argument("--latency-plot")
    p.add_argument("--accuracy-plot")
    cli.run(main, p)
