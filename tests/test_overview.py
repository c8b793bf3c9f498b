"""trtflow.overview: the verdict table a run ends with, and the landing page of the report."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List

from trtflow.overview import console_table, counts_line, overview_html, verdict_counts
from trtflow.summary import SUMMARY_COLUMNS

LONG_FAILURE = ("output 'logits': rel_l2 = 0.361342 is above the allowed 0.35 | sample 'coffee' "
                "should be espresso, the engine says 'cup' (top-1 agreement 0.875 < 0.9)")


def row(**values: str) -> Dict[str, str]:
    base = dict.fromkeys(SUMMARY_COLUMNS, "")
    base.update(model="mobilenet_v2", precision="fp32", batch_profile="latency", verdict="passed",
                latency_p50_ms="3.63312", speedup_vs_torch="5.09012", rel_l2="1.02926e-06")
    base.update(values)
    return base


def matrix() -> List[Dict[str, str]]:
    return [row(),
            row(precision="int8", verdict="failed", rel_l2="0.361342", failures=LONG_FAILURE),
            row(model="det", verdict="passed", rel_l2="", detection_recall="0.98"),
            row(model="seg", verdict="vacuous", miou="1.0", rel_l2="nan",
                failures="output 'out' is constant in the reference"),
            {**dict.fromkeys(SUMMARY_COLUMNS, ""), "model": "tok", "precision": "int8",
             "batch_profile": "latency", "verdict": "error",
             "failures": "precision.log: model 'tok': int8 quantisation inserted no QuantizeLinear node"}]


def test_the_console_table_has_one_line_per_cell_then_the_counts() -> None:
    lines = console_table(matrix()).splitlines()
    assert lines[0].split() == ["model", "precision", "profile", "verdict", "p50", "ms",
                                "speed-up", "metric", "failure"]
    body = lines[2:-2]
    assert len(body) == 5 and set(lines[1]) == {"-"} and set(lines[-2]) == {"-"}
    assert lines[-1] == "5 cells: 2 passed, 1 failed, 1 vacuous, 1 error"
    assert body[0].split() == ["mobilenet_v2", "fp32", "latency", "passed", "3.633", "5.09x",
                               "rel_l2", "1.029e-06"]
    # each cell's key metric: recall for a detector, mIoU for segmentation, else rel. L2
    assert "recall 0.98" in body[2] and "mIoU 1" in body[3] and "rel_l2 0.3613" in body[1]
    # the failure in one line, cut to fit; an error row has no numbers
    assert body[1].endswith("...") and "rel_l2 = 0.361342 is above the allowed 0.35" in body[1]
    assert len(body[1]) < 160
    assert body[4].split()[:4] == ["tok", "int8", "latency", "error"]
    assert "precision.log: model 'tok'" in body[4]


def test_counts_follow_the_verdict_order() -> None:
    assert list(verdict_counts(matrix())) == ["passed", "failed", "vacuous", "error"]
    assert counts_line([row()]) == "1 cell: 1 passed"


def test_the_landing_page_has_the_counts_the_table_and_the_plots(tmp_path: Path) -> None:
    plot = tmp_path / "latency_vs_batch.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    page = overview_html(matrix(), [plot, tmp_path / "accuracy_vs_speed.png"])
    assert "<h1>trtflow: 5 cells: 2 passed, 1 failed, 1 vacuous, 1 error</h1>" in page
    assert page.count("<tr><td>") == 5
    assert '<td class="failed">failed</td>' in page
    # the whole failure, escaped
    assert "output &#x27;logits&#x27;: rel_l2 = 0.361342" in page and "top-1 agreement 0.875" in page
    assert 'src="data:image/png;base64,' in page
    assert "accuracy vs speed: not written" in page


def test_the_table_reads_the_summary_as_written(tmp_path: Path) -> None:
    """The console and the page read summary.csv, strings and empty cells as the summary wrote
    them."""
    path = tmp_path / "summary.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(matrix())
    from trtflow.overview import read_summary, run_verdict

    assert read_summary(path) == matrix()
    message = run_verdict(path, ["results/summary.csv", "results/report.html"])
    assert message.splitlines()[0] == "trtflow verdicts (results/summary.csv, results/report.html):"
    assert message.splitlines()[-1] == "5 cells: 2 passed, 1 failed, 1 vacuous, 1 error"


def test_an_unstable_speedup_shows_its_interval_not_a_number() -> None:
    from trtflow.overview import speedup_text
    assert speedup_text({"speedup_vs_torch": "5.09012"}) == "5.09x"
    assert speedup_text({"speedup_vs_torch": "", "speedup_interval": "1.33-2.04"}) == (
        "1.33-2.04x unstable")
    assert speedup_text({"speedup_vs_torch": "", "speedup_interval": ""}) == ""
