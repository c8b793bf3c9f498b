"""What a run ends with: the verdict table on the console and the landing page of the report.

Both read results/summary.csv (strings, as written), so the console, results/index.html and the
report's first screen show the same cells. Standard library only: the Snakefile's end-of-run
handlers import it."""
from __future__ import annotations

import base64
import csv
import html
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

# the order counts and table rows are told in: good news first, then what needs a look
VERDICT_ORDER = ("passed", "unchecked", "failed", "vacuous", "error")
# a failure is cut to this many characters on the console (the whole text is in the summary,
# the report and the verdicts job's error message)
FAILURE_WIDTH = 72
# the metric that tells a cell's accuracy, by what its row has: a detector's recall, a
# segmenter's mIoU, else the first output's relative L2 (classification, generic)
KEY_METRICS = (("detection_recall", "recall"), ("miou", "mIoU"), ("rel_l2", "rel_l2"))


def read_summary(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def verdict_counts(rows: Sequence[Mapping[str, str]]) -> Dict[str, int]:
    counts = Counter(row["verdict"] for row in rows)
    ordered = [v for v in VERDICT_ORDER if v in counts] + sorted(set(counts) - set(VERDICT_ORDER))
    return {verdict: counts[verdict] for verdict in ordered}


def counts_line(rows: Sequence[Mapping[str, str]]) -> str:
    """'12 cells: 10 passed, 1 failed, 1 error'."""
    counts = verdict_counts(rows)
    told = ", ".join(f"{n} {verdict}" for verdict, n in counts.items())
    return f"{len(rows)} cell{'s' if len(rows) != 1 else ''}: {told or 'none'}"


def key_metric(row: Mapping[str, str]) -> Tuple[str, str]:
    """(name, value) of the cell's key accuracy metric, ('', '') when it has none (an error)."""
    for column, name in KEY_METRICS:
        if row.get(column, "") != "":
            return name, _number(row[column])
    return "", ""


def one_line(text: str, width: int = FAILURE_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def _number(value: str) -> str:
    """Four significant digits: enough to read a verdict, short enough for a table."""
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value



def speedup_text(row: Mapping[str, Any]) -> str:
    """The speed-up against PyTorch, or, for a timing whose windows disagreed, its interval
    marked unstable (the summary gives no single number for noise)."""
    if row.get("speedup_vs_torch"):
        return f"{float(row['speedup_vs_torch']):.2f}x"
    if row.get("speedup_interval"):
        return f"{row['speedup_interval']}x unstable"
    return ""

def table_rows(rows: Sequence[Mapping[str, str]], failure_width: Optional[int] = FAILURE_WIDTH
               ) -> List[List[str]]:
    """The table's cells: model, precision, profile, verdict, p50, speed-up, key metric, failure."""
    table = []
    for row in rows:
        name, value = key_metric(row)
        failure = row.get("failures", "")
        table.append([
            row["model"], row["precision"], row["batch_profile"], row["verdict"],
            _number(row["latency_p50_ms"]) if row.get("latency_p50_ms") else "",
            speedup_text(row),
            f"{name} {value}" if name else "",
            one_line(failure, failure_width) if failure_width else failure,
        ])
    return table


TABLE_HEADER = ["model", "precision", "profile", "verdict", "p50 ms", "speed-up", "metric",
                "failure"]


def console_table(rows: Sequence[Mapping[str, str]]) -> str:
    """A fixed-width text table, one line per cell, then the counts."""
    table = [TABLE_HEADER] + table_rows(rows)
    widths = [max(len(line[i]) for line in table) for i in range(len(TABLE_HEADER))]
    numeric = {4, 5}  # right-aligned: p50, speed-up

    def format_line(line: Sequence[str]) -> str:
        cells = [cell.rjust(w) if i in numeric else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    rule = "-" * len(format_line(TABLE_HEADER))
    return "\n".join([format_line(TABLE_HEADER), rule, *map(format_line, table[1:]), rule,
                      counts_line(rows)])


def run_verdict(summary: Path, shown_as: Sequence[str]) -> str:
    """The end-of-run message: the table and counts of `summary`, and where to read more
    (`shown_as`: the summary's and the report's paths as the user knows them)."""
    return f"trtflow verdicts ({', '.join(shown_as)}):\n{console_table(read_summary(summary))}"


# ------------------------------------------------------------------ the landing page

# Inside Snakemake's report the page is the workflow description (report/workflow.rst includes
# it): the report centres that column vertically beside the rule graph and caps it at 32rem, so a
# tall page lost its top and the table was squeezed. These rules, scoped to the report's own
# classes, put the page at the top, full width, with the rule graph below it; opened on its own
# (results/index.html) they match nothing.
REPORT_LAYOUT_CSS = """
div.grow.flex.items-center.justify-center.h-screen { align-items: flex-start; justify-content: flex-start; }
div.grow.flex.gap-3.p-3.items-start { flex-wrap: wrap; }
div.prose.max-w-lg { max-width: none; }
"""

PAGE_CSS = """
.trtflow { font-family: system-ui, sans-serif; font-size: 14px; color: #1f2937; }
.trtflow h1 { font-size: 1.4em; margin: 0.2em 0; }
.trtflow .counts span { display: inline-block; padding: 0.15em 0.6em; margin-right: 0.4em;
  border-radius: 0.8em; font-weight: 600; }
.trtflow table { border-collapse: collapse; margin: 0.6em 0; }
.trtflow th, .trtflow td { padding: 0.2em 0.6em; border-bottom: 1px solid #e5e7eb;
  text-align: left; vertical-align: top; }
.trtflow td.num { text-align: right; font-variant-numeric: tabular-nums; }
.trtflow .failure { max-width: 36em; font-size: 0.9em; }
.trtflow img { max-width: 100%; margin: 0.4em 0; }
.trtflow .passed { background: #dcfce7; } .trtflow .unchecked { background: #e0e7ff; }
.trtflow .failed, .trtflow .error { background: #fee2e2; } .trtflow .vacuous { background: #fef3c7; }
"""


def _image_tag(path: Path, alt: str) -> str:
    """A plot inlined as data, so the page (and the report that includes it) is one file."""
    if not path.is_file():
        return f"<p>{html.escape(alt)}: not written</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def overview_html(rows: Sequence[Mapping[str, str]], plots: Sequence[Path],
                  partial: bool = False) -> str:
    """The landing page: the verdict counts, the verdict table (failures whole) and the plots."""
    counts = "".join(f'<span class="{html.escape(v)}">{n} {html.escape(v)}</span>'
                     for v, n in verdict_counts(rows).items())
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADER)
    body = []
    for line in table_rows(rows, failure_width=None):
        cells = [f"<td>{html.escape(c)}</td>" for c in line[:3]]
        cells.append(f'<td class="{html.escape(line[3])}">{html.escape(line[3])}</td>')
        cells += [f'<td class="num">{html.escape(c)}</td>' for c in line[4:6]]
        cells.append(f"<td>{html.escape(line[6])}</td>")
        cells.append(f'<td class="failure">{html.escape(line[7])}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = ("<p><b>A job failed:</b> this is the summary of the cells that finished; the next run "
            "makes it anew.</p>" if partial else "")
    images = "".join(_image_tag(p, p.stem.replace("_", " ")) for p in plots)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>trtflow results</title>
<style>{REPORT_LAYOUT_CSS}{PAGE_CSS}</style></head>
<body><div class="trtflow">
<h1>trtflow: {html.escape(counts_line(rows))}</h1>
<p class="counts">{counts}</p>{note}
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<p>p50 and speed-up (PyTorch eager fp32 latency / engine latency, same inputs, same run) at each
batch profile's opt batch; metric: the cell's key accuracy metric vs PyTorch (recall for
detectors, mIoU for segmentation, else the first output's relative L2). Every column is in
summary.csv.</p>
{images}
</div></body></html>
"""


def write_overview(path: Path, rows: Sequence[Mapping[str, str]], plots: Sequence[Path],
                   partial: bool = False) -> None:
    from .io import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(overview_html(rows, plots, partial))
