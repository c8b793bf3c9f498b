#!/usr/bin/env python3
"""Summary stage: results/summary.csv (one row per cell), the long latency table and the plots.

Also run by the workflow's on-error handler (--partial-marker): then it writes the same files for
the cells that finished, `error` rows with each other cell's first error, and a marker that makes
the next run set these files aside and make them again."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def main(args) -> None:
    from trtflow import overview, summary

    from trtflow.io import write_json

    rows = summary.summarize(args.cells, Path(args.summary), Path(args.latency),
                             run_started=args.run_started, slower_margin=args.slower_margin,
                             profile_path=Path(args.profile) if args.profile else None)
    if args.latency_plot:
        summary.plot_latency_vs_batch(Path(args.latency), Path(args.latency_plot))
    if args.accuracy_plot:
        summary.plot_accuracy_vs_speed(Path(args.summary), Path(args.accuracy_plot))
    if args.profile and args.profile_plot:
        summary.plot_layer_profile(Path(args.profile), Path(args.profile_plot))
    if args.overview:
        plots = [Path(p) for p in (args.latency_plot, args.accuracy_plot, args.profile_plot) if p]
        overview.write_overview(Path(args.overview), overview.read_summary(Path(args.summary)),
                                plots, partial=bool(args.partial_marker))
    if args.partial_marker:
        written = [p for p in (args.summary, args.latency, args.latency_plot, args.accuracy_plot,
                               args.profile, args.profile_plot, args.overview) if p]
        write_json(args.partial_marker, {"files": written, "verdicts": {
            v: sum(r["verdict"] == v for r in rows) for v in sorted({r["verdict"] for r in rows})}})


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--cells", required=True, type=cli.json_arg,
                   help="JSON list: {model, precision, batch_profile, benchmark, validation, "
                        "baseline, weights} per cell")
    p.add_argument("--summary", required=True)
    p.add_argument("--latency", required=True)
    p.add_argument("--latency-plot")
    p.add_argument("--accuracy-plot")
    p.add_argument("--profile", help="results/layer_profile.csv: time per layer category")
    p.add_argument("--profile-plot")
    p.add_argument("--slower-margin", type=float, required=True,
                   help="benchmark.slower_margin: how much slower a lower precision may be")
    p.add_argument("--overview", help="the landing page: verdict counts, table and plots (HTML)")
    p.add_argument("--partial-marker", help="on-error run: write this marker listing the files")
    p.add_argument("--run-started", type=float,
                   help="on-error run: when the run started (a job of a cell's chain that failed "
                        "since makes its row `error`; only logs written since are cited)")
    cli.run(main, p)
