"""What every workflow script shares: argument parsing, logging to the rule's log, and turning a
TrtflowError into one clear line on stderr and a non-zero exit (stdlib only)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from typing import Any, Callable, Optional, Sequence

from pathlib import Path

from .errors import TrtflowError
from .io import set_producers
from .provenance import loaded_sources


def parser(description: str) -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    result.add_argument("--log", help="append the log here (stderr then shows warnings only)")
    result.add_argument("--provenance", default="",
                        help="digest of everything upstream (from the workflow), recorded in outputs")
    result.add_argument("--producers", type=json_arg, default={},
                        help="JSON: input path -> the workflow stage that writes it (for errors)")
    return result


def json_arg(text: str) -> Any:
    """argparse type for JSON-valued options (the rules pass config slices this way)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


def setup_logging(log_path: Optional[str]) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if log_path else logging.INFO)
    console.setFormatter(fmt)
    root.addHandler(console)
    if log_path:
        handler = logging.FileHandler(log_path, mode="a")
        handler.setFormatter(fmt)
        root.addHandler(handler)


def run(main: Callable[[argparse.Namespace], Any], arg_parser: argparse.ArgumentParser,
        argv: Optional[Sequence[str]] = None) -> None:
    args = arg_parser.parse_args(argv)
    setup_logging(args.log)
    log = logging.getLogger(arg_parser.prog)
    log.info("command: %s", " ".join(sys.argv))
    set_producers(args.producers)
    try:
        main(args)
        # what the stage really ran: tests compare it with the import closure the workflow hashes
        log.info("code: %s", " ".join(loaded_sources(Path(__file__).resolve().parents[1])))
    except TrtflowError as exc:
        # one clear message, on the console and in the log; no traceback for input errors
        log.error("trtflow error: %s", exc)
        sys.exit(1)
    except Exception:
        log.error("unexpected failure:\n%s", traceback.format_exc())
        raise
