"""What every workflow script shares: argument parsing, logging to the rule's log, and turning a
TrtflowError into one clear line on stderr and a non-zero exit (stdlib only)."""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
import traceback
from typing import Any, Callable, Dict, Optional, Sequence

from pathlib import Path

from . import node
from .errors import TrtflowError
from .io import set_producers, storage_error
from .provenance import loaded_sources


def parser(description: str) -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    result.add_argument("--log", help="append the log here (stderr then shows warnings only)")
    result.add_argument("--provenance", default="",
                        help="digest of everything upstream (from the workflow), recorded in outputs")
    result.add_argument("--producers", type=json_arg, default={},
                        help="JSON: input path -> the workflow stage that writes it (for errors)")
    result.add_argument("--requires", type=json_arg, default={},
                        help="JSON: what this node must have to run the run's backend "
                             "(trtflow/node.py); {}: runs anywhere")
    return result


def add_job_threads(arg_parser: argparse.ArgumentParser) -> None:
    """--job-threads: the cores Snakemake gave the job ({threads}), which a runtime set to 0
    threads uses: every core of a local run for a timing job, what the cluster allocated on a
    cluster (where the runtime's own default, one per core of the node, would oversubscribe)."""
    arg_parser.add_argument("--job-threads", type=int, required=True,
                            help="the cores Snakemake gave this job ({threads})")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a cgroup's cpuset, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def job_threads(args: argparse.Namespace) -> int:
    """The job's cores (--job-threads), at most the CPUs it can run on: `snakemake --cores 4` on
    a 2-core machine gives a timing job 4 cores, and 4 threads on 2 CPUs wait for a CPU half
    of the time (trtflow.contention measured 52 %), which makes every timing unstable."""
    return max(1, min(int(args.job_threads), usable_cpus()))


def runner_options(args: argparse.Namespace) -> Dict[str, Any]:
    """--options with a `threads` of 0 (config onnxruntime.intra_op_threads) made the job's."""
    options = dict(args.options)
    if "threads" in options and not options["threads"]:
        options["threads"] = job_threads(args)
    return options


def json_arg(text: str) -> Any:
    """argparse type for JSON-valued options (the rules pass config slices this way)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


def setup_logging(log_path: Optional[str]) -> None:
    # a log that cannot be written (a full disk) must not bury the stage's own error under
    # logging's tracebacks: the console still gets the warnings and errors
    logging.raiseExceptions = False
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


# what a signal that ends a stage most likely means, and what to try
SIGNAL_HINTS = {
    "SIGKILL": "killed from outside, most often by the out-of-memory killer: lower the batch "
               "profile's max (or the model's input size), or run fewer jobs at once (--cores)",
    "SIGSEGV": "a native library (ONNX Runtime, TensorRT, PyTorch) crashed on this model; the "
               "log has the Python frames where it happened",
    "SIGABRT": "a native library (ONNX Runtime, TensorRT, PyTorch) aborted; the log has the "
               "Python frames where it happened",
    "SIGBUS": "a native library crashed (or the disk is full); the log has the Python frames",
    "SIGILL": "an instruction this CPU lacks: a library or an artifact built for another CPU",
}
ONNXRUNTIME_HINT = ("for ONNX Runtime, try the model's `onnxruntime: {graph_optimization_level: "
                    "extended}` or `disabled_optimizers: [NchwcTransformer]`")


def signal_message(stage: str, number: int, backend: Optional[str]) -> str:
    """One line for a stage killed by a signal: which, the likely cause, the options to try."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    hint = SIGNAL_HINTS.get(name, "it was stopped from outside or crashed")
    if backend == "onnxruntime" and name != "SIGKILL":
        hint += f"; {ONNXRUNTIME_HINT}"
    return f"{stage} was killed by {name} ({number}): {hint}"


def run(main: Callable[[argparse.Namespace], Any], arg_parser: argparse.ArgumentParser,
        argv: Optional[Sequence[str]] = None, isolate: Optional[bool] = None) -> None:
    """Parse, log, run `main`; a TrtflowError is one clear line and exit 1.

    `isolate` (default: when run as a command, argv None) runs `main` in a forked child, so that
    a stage killed by a signal (a native crash, the OOM killer) is still reported, with the
    likely cause, instead of a bare 'died with SIGSEGV'."""
    args = arg_parser.parse_args(argv)
    setup_logging(args.log)
    log = logging.getLogger(arg_parser.prog)
    log.info("command: %s", " ".join(sys.argv))
    set_producers(args.producers)
    if (argv is None if isolate is None else isolate) and hasattr(os, "fork"):
        sys.exit(_run_isolated(main, args, log, arg_parser.prog))
    _run_main(main, args, log)


def _run_isolated(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace,
                  log: logging.Logger, stage: str) -> int:
    for handler in logging.getLogger().handlers:
        handler.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child runs the stage; a native crash prints its Python frames to the log
        code = 1
        _die_with(parent)
        try:
            with open(args.log, "a") if args.log else contextlib.nullcontext(sys.stderr) as crash:
                faulthandler.enable(crash)
                _run_main(main, args, log)
                code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:  # logged by _run_main
            code = 1
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        log.error("trtflow error: %s", signal_message(stage, os.WTERMSIG(status),
                                                      getattr(args, "backend", None)))
        return 1
    return os.WEXITSTATUS(status)


def _die_with(parent: int) -> None:
    """Make this (forked) process die when `parent` does (Linux): a stage whose process is
    killed, by Snakemake or the OOM killer, must not leave its worker running on, writing an
    output after Snakemake has removed the failed job's outputs."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (ImportError, OSError, AttributeError):  # not Linux, or no ctypes: best effort
        pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _run_main(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace,
              log: logging.Logger) -> None:
    try:
        node.check(args.requires)
        main(args)
        # what the stage really ran: tests compare it with the import closure the workflow hashes
        log.info("code: %s", " ".join(loaded_sources(Path(__file__).resolve().parents[1])))
    except TrtflowError as exc:
        # one clear message, on the console and in the log; no traceback for input errors
        log.error("trtflow error: %s", exc)
        sys.exit(1)
    except OSError as exc:  # a full disk or a folder not writable outside io.atomic_path
        said = storage_error(exc, exc.filename) if exc.filename else None
        if said is None:
            log.error("unexpected failure:\n%s", traceback.format_exc())
            raise
        log.error("trtflow error: %s", said)
        sys.exit(1)
    except Exception:
        log.error("unexpected failure:\n%s", traceback.format_exc())
        raise
