"""trtflow.cli: JSON options, logging to the rule's log, and one clear line per TrtflowError."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Iterator

import pytest

from trtflow import cli
from trtflow.errors import TrtflowError


@pytest.fixture
def clean_root_logger() -> Iterator[None]:
    """cli.setup_logging adds handlers to the root logger: take them off again afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_arg_parses_json_and_refuses_other_text() -> None:
    assert cli.json_arg('{"passes": ["cleanup"], "n": 2}') == {"passes": ["cleanup"], "n": 2}
    with pytest.raises(argparse.ArgumentTypeError, match="not valid JSON"):
        cli.json_arg("{passes: cleanup}")


def test_parser_has_the_log_option() -> None:
    args = cli.parser("stage").parse_args(["--log", "x.log"])
    assert args.log == "x.log"


def test_run_turns_a_trtflow_error_into_exit_1_and_one_log_line(
        tmp_path: Path, clean_root_logger: None, capsys: pytest.CaptureFixture) -> None:
    log_path = tmp_path / "stage.log"

    def main(args: argparse.Namespace) -> None:
        raise TrtflowError("weights file not found", model="net", fix="fix the path")

    with pytest.raises(SystemExit) as info:
        cli.run(main, cli.parser("stage"), ["--log", str(log_path)])
    assert info.value.code == 1
    text = log_path.read_text()
    assert "ERROR" in text and "trtflow error: model 'net': weights file not found" in text
    assert "fix: fix the path" in text
    assert "Traceback" not in text
    assert "trtflow error" in capsys.readouterr().err  # warnings and errors still reach stderr


def test_run_logs_and_reraises_an_unexpected_exception(
        tmp_path: Path, clean_root_logger: None) -> None:
    log_path = tmp_path / "stage.log"

    def main(args: argparse.Namespace) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        cli.run(main, cli.parser("stage"), ["--log", str(log_path)])
    text = log_path.read_text()
    assert "unexpected failure" in text and "Traceback" in text and "KeyError: 'boom'" in text


def test_run_calls_main_with_the_parsed_arguments(tmp_path: Path, clean_root_logger: None) -> None:
    seen = {}
    arg_parser = cli.parser("stage")
    arg_parser.add_argument("--options", type=cli.json_arg, default={})

    def main(args: argparse.Namespace) -> None:
        seen.update(args.options)
        logging.getLogger("stage").info("working")

    cli.run(main, arg_parser, ["--options", '{"a": 1}', "--log", str(tmp_path / "l.log")])
    assert seen == {"a": 1}
    assert "working" in (tmp_path / "l.log").read_text()


def test_a_stage_killed_by_a_signal_is_reported_with_its_likely_cause(
        tmp_path: Path, clean_root_logger: None) -> None:
    """A native crash (here a real segfault) in the isolated stage: one trtflow error, exit 1."""
    import ctypes

    log_path = tmp_path / "stage.log"
    arg_parser = cli.parser("engine.py")
    arg_parser.add_argument("--backend", default="onnxruntime")

    def main(args: argparse.Namespace) -> None:
        ctypes.string_at(0)  # reads address 0: SIGSEGV

    with pytest.raises(SystemExit) as info:
        cli.run(main, arg_parser, ["--log", str(log_path)], isolate=True)
    assert info.value.code == 1
    text = log_path.read_text()
    assert "trtflow error: " in text and "was killed by SIGSEGV (11)" in text
    assert "disabled_optimizers: [NchwcTransformer]" in text
    assert "Fatal Python error: Segmentation fault" in text  # faulthandler's frames, in the log


@pytest.mark.parametrize("number,needle", [(9, "out-of-memory killer"), (4, "this CPU lacks")])
def test_signal_message_names_the_cause(number: int, needle: str) -> None:
    assert needle in cli.signal_message("baseline.py", number, None)


def test_an_isolated_stage_keeps_its_exit_status(tmp_path: Path, clean_root_logger: None) -> None:
    def main(args: argparse.Namespace) -> None:
        raise TrtflowError("bad input")

    with pytest.raises(SystemExit) as info:
        cli.run(main, cli.parser("stage"), ["--log", str(tmp_path / "l.log")], isolate=True)
    assert info.value.code == 1
    assert "trtflow error: bad input" in (tmp_path / "l.log").read_text()


def test_an_isolated_stage_dies_with_its_process(tmp_path: Path) -> None:
    """Killing the stage's process (as Snakemake or the OOM killer would) leaves no worker behind
    that could write an output after the job was declared failed."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "stage.py"
    marker = tmp_path / "written"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(cli.__file__).resolve().parents[1])!r})\n"
        "from trtflow import cli\n"
        "def main(args):\n"
        "    time.sleep(3)\n"
        f"    open({str(marker)!r}, 'w').write('late')\n"
        "cli.run(main, cli.parser('stage'))\n")
    process = subprocess.Popen([sys.executable, str(script), "--log", str(tmp_path / "s.log")])
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)  # the stage's own process, not its worker
    process.wait()
    time.sleep(3.5)
    assert not marker.exists()
