#!/usr/bin/env python3
"""Verdicts stage: the run fails (validation.on_failure: fail) when any cell of the summary is
failed, vacuous or error, with one line per such cell; the summary and report are written first."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trtflow package beside us
from trtflow import cli  # noqa: E402


def main(args) -> None:
    import csv
    import logging
    from collections import Counter

    from trtflow.errors import TrtflowError
    from trtflow.io import write_json
    from trtflow.summary import precision_debug_hint, speed_flag_lines, verdict_failures

    with open(args.summary, newline="") as handle:
        rows = list(csv.DictReader(handle))
    counts = dict(Counter(row["verdict"] for row in rows))
    failures = verdict_failures(rows)
    hint = precision_debug_hint(rows, args.debug_fallbacks, args.rerun)
    for line in speed_flag_lines(rows):  # a claim of speed that does not hold: said, not failed
        logging.getLogger("verdicts").warning("%s", line)
    if failures and args.on_failure == "fail":
        raise TrtflowError(
            f"{len(failures)} of {len(rows)} cells did not pass ({counts}); {args.summary} and the "
            "report have every cell:\n  " + "\n  ".join(failures),
            fix="see each cell's validation JSON; loosen validation.tolerances or the model's "
                "tolerances only with a reason, or set validation.on_failure: record"
                + (f"; {hint}" if hint else ""))
    for line in failures + ([hint] if hint else []):
        logging.getLogger("verdicts").warning("%s", line)
    write_json(args.output, {"cells": len(rows), "verdicts": counts, "on_failure": args.on_failure,
                             "not_passed": failures, "provenance": args.provenance})


if __name__ == "__main__":
    p = cli.parser(__doc__)
    p.add_argument("--summary", required=True)
    p.add_argument("--on-failure", choices=["fail", "record"], required=True)
    p.add_argument("--debug-fallbacks", type=cli.json_arg, default={},
                   help="JSON: '<model> <precision>' -> its debug_precision overlay, for the "
                        "cells a fallback list can help")
    p.add_argument("--rerun", type=cli.json_arg, default={},
                   help="JSON: this run's configfiles, default_config and config overrides, for "
                        "the commands the hint prints (trtflow.commands)")
    p.add_argument("--output", required=True)
    cli.run(main, p)
