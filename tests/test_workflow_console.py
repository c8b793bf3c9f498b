"""What a user sees, run for real: a run says its backend once, prints no quantiser advice, ends
with the verdict table and counts, and its report opens on trtflow's landing page; a no-op rerun
ends with the table too and writes a missing report; a dry run's `reason:` lines stay short."""
from __future__ import annotations

import re
from typing import List

import pytest

from conftest import Workflow, resnet_entry, tiny_config

pytestmark = pytest.mark.workflow


def small_matrix(precisions: List[str]) -> dict:
    config = tiny_config(models={"net": resnet_entry({"random": True})}, precisions=precisions,
                         validation={"num_samples": 4, "on_failure": "record"})
    config["report"] = {"html": True}
    return config


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    flow = Workflow(tmp_path_factory.mktemp("console"))
    flow.write_config(small_matrix(["fp32", "int8"]))
    done = flow.run("all")
    return flow, done.stdout + done.stderr


def after_the_table(output: str) -> List[str]:
    """The lines from the verdict table's title to the end of the output."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("trtflow verdicts (")]
    assert starts, output[-3000:]
    return lines[starts[-1]:]


def test_a_run_ends_with_the_verdict_table_and_the_counts(first_run) -> None:
    flow, output = first_run
    tail = after_the_table(output)
    assert tail[0] == ("trtflow verdicts (results/summary.csv, results/index.html, "
                       "results/report.html):")
    assert tail[1].split()[:4] == ["model", "precision", "profile", "verdict"]
    # a speed-up whose timings were not stable (a loaded machine) is its interval and "unstable"
    cells = [[word for word in line.split() if word != "unstable"] for line in tail[3:5]]
    assert [c[:3] for c in cells] == [["net", "fp32", "small"], ["net", "int8", "small"]]
    assert all(c[3] in ("passed", "failed") and c[5].endswith("x") and c[6] == "rel_l2"
               for c in cells), tail
    counts = tail[6]
    assert re.fullmatch(r"2 cells: (\d passed)?(, )?(\d failed)?", counts), tail
    # after the counts only Snakemake's own closing lines
    assert all(line.startswith(("Complete log", "Elapsed time")) for line in tail[7:]), tail


def test_the_backend_is_said_once_and_the_quantiser_gives_no_advice(first_run) -> None:
    flow, output = first_run
    assert output.count("trtflow backend: onnxruntime") == 1, output[-3000:]
    logs = "".join(p.read_text() for p in flow.path("results/logs").rglob("*.log"))
    assert "int8" in logs  # the int8 cell's precision job logged here
    for text in (output, logs):
        assert "pre-processing before quantization" not in text


def test_the_report_opens_on_the_landing_page(first_run) -> None:
    """The workflow description, the report's first screen, is trtflow's landing page: the
    counts, the table and the plots; results/index.html is the same page on its own."""
    flow, _ = first_run
    page = flow.path("results/index.html").read_text()
    # the latency, accuracy and layer-time plots
    assert "<h1>trtflow: 2 cells: " in page and page.count('src="data:image/png;base64,') == 3
    report = flow.path("results/report.html").read_text(errors="replace")
    description = re.search(r"workflow_desc\s*=\s*(\".*?[^\\]\");", report, flags=re.S)
    assert description, "no workflow description in the report"
    assert "<h1>trtflow: 2 cells: " in description.group(1)
    assert "<td>net</td><td>int8</td><td>small</td>" in description.group(1)


def test_a_run_with_nothing_to_do_ends_with_the_table_and_writes_a_missing_report(first_run) -> None:
    flow, _ = first_run
    flow.path("results/report.html").unlink()
    done = flow.run("all")
    output = done.stdout + done.stderr
    assert "Nothing to be done" in output
    tail = after_the_table(output)
    assert [line.split()[:2] for line in tail[3:5]] == [["net", "fp32"], ["net", "int8"]]
    assert tail[-1].startswith("2 cells: ")
    assert "<h1>trtflow: 2 cells: " in flow.path("results/report.html").read_text(errors="replace")


def test_a_dry_run_after_a_new_precision_gives_short_reasons(first_run) -> None:
    """Changed params are printed whole in `reason:` lines: the summary's per-cell paths and
    digests were 20 kB of them; they are left out of its recorded params now."""
    flow, _ = first_run
    flow.write_config(small_matrix(["fp32", "fp16", "int8"]))
    try:
        done = flow.run("-n", "all")
    finally:
        flow.write_config(small_matrix(["fp32", "int8"]))
    output = done.stdout + done.stderr
    changes = re.findall(r"Params have changed since last execution: [^;\n]*", output)
    assert changes, output[-3000:]
    assert max(len(change) for change in changes) < 400, max(changes, key=len)[:3000]
