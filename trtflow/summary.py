"""Summary stage: one table row per model x precision x batch profile x backend, and the plots."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .errors import TrtflowError
from .io import atomic_path, read_json
from .profiling import CATEGORIES, explain_slower, profile_columns
from .provenance import digest
from .validate import FAILING_VERDICTS

PROFILE_COLUMNS = list(profile_columns(None))
SUMMARY_COLUMNS = [
    "model", "precision", "batch_profile", "verdict", "backend", "backend_version", "device",
    "batch", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms",
    "throughput", "timing_mode", "eager_latency_p50_ms", "torch_latency_p50_ms",
    "speedup_vs_torch", "timing_stable", "timing_spread", "torch_timing_spread",
    "speedup_interval", "speedup_timing", "timing_cpu_wait",
    "torch_fp16_latency_p50_ms", "speedup_vs_torch_fp16", "speed_flags",
    "speed_why", "validation_passed", "max_abs", "rel_l2", "cosine",
    "top1_agreement", "top5_agreement", "pixel_agreement", "miou", "detection_recall",
    "detection_precision", "box_iou", "score_diff", "mask_iou", "keypoint_distance", "failures",
    "weights", "calibration",
    "build_seconds", "kept_for_speed", "layer_precisions", *PROFILE_COLUMNS, "provenance",
]
# the per-cell artifacts a summary row is made of (paths and expected provenance in each cell)
CELL_ARTIFACTS = ("benchmark", "validation", "baseline", "weights", "precision_report")
LATENCY_COLUMNS = ["model", "precision", "batch_profile", "backend", "batch", "latency_p50_ms",
                   "latency_p99_ms", "throughput"]
LAYER_PROFILE_COLUMNS = ["model", "precision", "batch_profile", "backend", "batch", "category",
                         "ms", "share", "layers"]
# higher precision first: a cell is expected to be faster than every cell of a lower rank
PRECISION_RANK = {"fp32": 0, "fp16": 1, "bf16": 1, "int8": 2, "fp8": 2}


def _at_batch(batches: Sequence[Mapping[str, Any]], batch: int) -> Optional[Mapping[str, Any]]:
    return next((b for b in batches if int(b["batch"]) == int(batch)), None)


def _baseline_point(baseline: Mapping[str, Any], variant: str,
                    batch: int) -> Optional[Mapping[str, Any]]:
    for entry in baseline["variants"]:
        if entry["variant"] == variant:
            return _at_batch(entry["batches"], batch)
    return None


def _baseline(baseline: Mapping[str, Any], variant: str, batch: int) -> Optional[float]:
    point = _baseline_point(baseline, variant, batch)
    return float(point["latency_p50_ms"]) if point else None


def timing_columns(point: Mapping[str, Any], torch: Optional[Mapping[str, Any]],
                   paired: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """How sure the timings are (trtflow.benchmark.stable_times): `timing_stable` (the engine's
    windows agreed, and so did the side-by-side pairs, or PyTorch's own windows where there are
    none), their spreads, and the speed-up's interval: the pairs' range (trtflow.side_by_side),
    or from separate jobs PyTorch's slowest window over the engine's fastest, and the reverse.
    `speedup_timing` says which. Empty for measurements made before timings had windows."""
    if "stable" not in point:
        return {"timing_stable": "", "timing_spread": "", "torch_timing_spread": "",
                "speedup_interval": "", "speedup_timing": "", "timing_cpu_wait": ""}
    side_by_side = timed_side_by_side(paired, point)
    other_stable = paired["stable"] if side_by_side else (torch or {}).get("stable", True)
    columns = {"timing_stable": bool(point["stable"] and other_stable),
               "timing_spread": _round(point["spread"]),
               "torch_timing_spread": _round((torch or {}).get("spread")), "speedup_interval": "",
               "speedup_timing": speedup_timing(paired, side_by_side),
               "timing_cpu_wait": _round(_largest(
                   [point.get("cpu_wait_share"), (paired if side_by_side else torch or {})
                    .get("cpu_wait_share")]))}
    if side_by_side:
        columns["speedup_interval"] = "{:.3g}-{:.3g}".format(*paired["interval"])
    elif torch and "window_p50_ms" in torch:
        low = min(torch["window_p50_ms"]) / max(point["window_p50_ms"])
        high = max(torch["window_p50_ms"]) / min(point["window_p50_ms"])
        columns["speedup_interval"] = f"{low:.3g}-{high:.3g}"
    return columns


def timed_side_by_side(paired: Optional[Mapping[str, Any]], point: Mapping[str, Any]) -> bool:
    """Whether the side-by-side pairs were timed at this point's batch."""
    return bool(paired and "speedup" in paired and paired["batch"] == point["batch"])


def _largest(values: Sequence[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def speedup_timing(paired: Optional[Mapping[str, Any]], side_by_side: bool) -> str:
    if side_by_side:
        return f"side by side ({paired['pairs']} pairs)"
    why = (paired or {}).get("skipped")
    return "separate jobs" + (f" ({why})" if why else "")


def _speedup(torch32: Optional[float], p50: float, paired: Optional[Mapping[str, Any]],
             point: Mapping[str, Any], timing: Mapping[str, Any]) -> Any:
    """The engine's speed-up over PyTorch eager fp32: the side-by-side pairs' median where they
    were timed; none from timings whose windows disagree (noise is no speed-up)."""
    if timing["timing_stable"] is False:
        return ""
    if timed_side_by_side(paired, point):
        return round(paired["speedup"], 3)
    return round(torch32 / p50, 3) if torch32 else ""


# the accuracy columns of a cell's task: tensor metrics of its first output, or, for detectors,
# the detection metrics (their first output is the labels tensor, whose rel. L2 means nothing)
TENSOR_COLUMNS = {name: name for name in ("max_abs", "rel_l2", "cosine", "top1_agreement",
                                          "top5_agreement", "pixel_agreement", "miou")}
DETECTION_COLUMNS = {"detection_recall": "detection_recall",
                     "detection_precision": "detection_precision", "box_iou": "matched_box_iou",
                     "score_diff": "max_score_diff", "mask_iou": "mask_iou",
                     "keypoint_distance": "keypoint_distance"}


def accuracy_columns(validation: Mapping[str, Any]) -> Dict[str, Any]:
    if "detections" in validation:
        metrics, columns = validation["detections"], DETECTION_COLUMNS
    else:
        metrics = next(iter((validation.get("outputs") or {}).values()), {})
        columns = TENSOR_COLUMNS
    return {column: _round(metrics.get(key)) for column, key in columns.items()}


def calibration_column(precision_report: Mapping[str, Any]) -> str:
    """An int8 cell's calibration: the method, and the tensors that fell back to min/max."""
    calibration = precision_report.get("calibration")
    if not calibration:
        return ""
    fallback = calibration.get("fallback")
    if not fallback:
        return calibration["method"]
    names = fallback["tensors"]
    return (f"{calibration['method']}; {fallback['method']} for {fallback['count']} tensors "
            f"without a histogram ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")


def summary_row(cell: Mapping[str, str], benchmark: Mapping[str, Any],
                validation: Mapping[str, Any], baseline: Mapping[str, Any],
                weights: Mapping[str, Any],
                precision_report: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    sidecar = benchmark["sidecar"]
    opt = int(sidecar["profile"]["opt"])
    point = _at_batch(benchmark["batches"], opt) or benchmark["batches"][-1]
    torch32_point = _baseline_point(baseline, "torch-eager-fp32", point["batch"])
    torch32 = float(torch32_point["latency_p50_ms"]) if torch32_point else None
    torch16 = _baseline(baseline, "torch-eager-fp16", point["batch"])
    p50 = float(point["latency_p50_ms"])
    paired = benchmark.get("side_by_side")
    timing = timing_columns(point, torch32_point, paired)
    # a speed-up from timings whose windows disagree is noise: the interval says what is known
    sure = timing["timing_stable"] is not False
    return {
        "model": cell["model"], "precision": cell["precision"],
        "batch_profile": cell["batch_profile"], "backend": sidecar["backend"],
        "backend_version": sidecar["version"], "device": sidecar.get("device_name", ""),
        "batch": point["batch"], "latency_p50_ms": round(p50, 4),
        "latency_p90_ms": round(point["latency_p90_ms"], 4),
        "latency_p99_ms": round(point["latency_p99_ms"], 4),
        "latency_mean_ms": round(point["latency_mean_ms"], 4),
        "throughput": round(point["throughput"], 2),
        "timing_mode": point.get("timing_mode", ""),
        "eager_latency_p50_ms": _round(point.get("eager_latency_p50_ms")),
        "torch_latency_p50_ms": round(torch32, 4) if torch32 else "",
        "speedup_vs_torch": _speedup(torch32, p50, paired, point, timing),
        **timing,
        "torch_fp16_latency_p50_ms": round(torch16, 4) if torch16 else "",
        "speedup_vs_torch_fp16": round(torch16 / p50, 3) if torch16 and sure else "",
        "verdict": validation["verdict"],
        "validation_passed": validation["verdict"] == "passed",
        **accuracy_columns(validation),
        "failures": " | ".join(validation.get("reference_problems", [])
                               + validation.get("failures", [])),
        "weights": weights.get("weights", ""),
        "calibration": calibration_column(precision_report or {}),
        "build_seconds": sidecar.get("build_seconds", ""),
        "kept_for_speed": kept_for_speed(sidecar),
        "layer_precisions": _format_counts(sidecar.get("layer_precisions")),
        **profile_columns(benchmark.get("layer_profile")),
        "provenance": digest([benchmark.get("provenance"), validation.get("provenance"),
                              baseline.get("provenance")]),
    }


def kept_for_speed(sidecar: Mapping[str, Any], shown: int = 5) -> str:
    """The nodes the latency-aware int8 placement kept out of int8 (tensorrt.int8_speed), and
    what it measured: '<n> nodes: a, b, ... (int8 x ms -> y ms, fp16 z ms)'."""
    report = sidecar.get("speed_placement")
    if not report:
        return ""
    nodes = report.get("kept_for_speed") or []
    first = report["rounds"][0].get("ms")
    if report.get("skipped"):
        return (f"0 nodes (int8 {first:.4g} ms, already {report['fp16_ms'] / first:.2f}x fp16 "
                f"{report['fp16_ms']:.4g} ms: no rounds)")
    names = ", ".join(nodes[:shown]) + (", ..." if len(nodes) > shown else "")
    return (f"{len(nodes)} nodes{': ' + names if nodes else ''} (int8 {first:.4g} -> "
            f"{report['int8_ms']:.4g} ms, fp16 {report['fp16_ms']:.4g} ms)")


def error_row(cell: Mapping[str, Any], reason: str) -> Dict[str, Any]:
    """The row of a cell that did not finish in this run (a job failed or was killed)."""
    return {"model": cell["model"], "precision": cell["precision"],
            "batch_profile": cell["batch_profile"], "verdict": "error",
            "backend": cell.get("backend", ""), "validation_passed": False, "failures": reason}


def logged_error(logs: Sequence[str], since: Optional[float] = None) -> Optional[str]:
    """The first error of a cell's jobs (their logs in chain order, upstream first), from each
    log's last run: the trtflow error message, or the exception line of an unexpected failure.
    `since`: only logs written from then on (this run's jobs), never an earlier run's error."""
    for log in logs:
        path = Path(log)
        if not path.is_file() or (since is not None and path.stat().st_mtime < since):
            continue
        lines = path.read_text(errors="replace").splitlines()
        starts = [i for i, line in enumerate(lines) if " command: " in line]
        last_run = lines[starts[-1]:] if starts else lines
        for index, line in enumerate(last_run):
            if "trtflow error: " in line:
                return f"{path.name}: {line.split('trtflow error: ', 1)[1]}"
            if "unexpected failure:" in line:
                exception = [t for t in last_run[index + 1:] if t and not t.startswith(" ")]
                return f"{path.name}: {exception[-1] if exception else 'unexpected failure'}"
    return None


def first_error(logs: Sequence[str], since: Optional[float] = None) -> str:
    """Why a cell did not finish: its first logged error, else which of its logs (of this run,
    with `since`) name none."""
    error = logged_error(logs, since)
    if error:
        return error
    ran = [log for log in logs if Path(log).is_file()
           and (since is None or Path(log).stat().st_mtime >= since)]
    if since is not None and not ran:
        return "not run: none of this cell's jobs ran in this run (another job's failure stopped it)"
    return ("did not finish in this run, and no log names an error (killed, e.g. by the OOM "
            "killer or a signal?): " + ", ".join(Path(log).name for log in ran[-3:]))


def cell_artifacts(cell: Mapping[str, Any]) -> Tuple[Optional[Dict[str, Any]], str]:
    """The cell's JSON artifacts if all exist and were made from what the workflow asks for now
    (their recorded provenance is the expected one), else None and, for a file that exists but
    cannot be read, why: a stale or broken file is never current."""
    found = {}
    for kind in CELL_ARTIFACTS:
        path = Path(cell[kind])
        if not path.is_file():
            return None, ""
        try:
            data = read_json(path)
        except TrtflowError as error:  # corrupt (marked: the next run deletes and remakes it)
            return None, str(error).replace("\n", " ")
        expected = (cell.get("provenance") or {}).get(kind)
        if expected and data.get("provenance") != expected:
            return None, ""
        found[kind] = data
    return found, ""


def _round(value: Any) -> Any:
    """Six significant digits, not six decimals: an fp32 rel. L2 of 3.7e-7 stays 3.7e-7 instead of
    becoming 0.0, which the table and the accuracy plot would show as an exact match."""
    return "" if value is None else float(f"{float(value):.6g}")


def _format_counts(counts: Optional[Mapping[str, int]]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items())) if counts else ""


def latency_rows(cell: Mapping[str, str], benchmark: Mapping[str, Any],
                 baseline: Mapping[str, Any]) -> List[Dict[str, Any]]:
    sidecar = benchmark["sidecar"]
    rows = [{"model": cell["model"], "precision": cell["precision"],
             "batch_profile": cell["batch_profile"], "backend": sidecar["backend"],
             **{k: point[k] for k in ("batch", "latency_p50_ms", "latency_p99_ms", "throughput")}}
            for point in benchmark["batches"]]
    for variant in baseline["variants"]:
        rows += [{"model": cell["model"], "precision": variant["precision"],
                  "batch_profile": cell["batch_profile"], "backend": variant["variant"],
                  **{k: point[k] for k in ("batch", "latency_p50_ms", "latency_p99_ms",
                                           "throughput")}}
                 for point in variant["batches"]]
    return rows


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def summarize(cells: Sequence[Mapping[str, Any]], summary_path: Path, latency_path: Path,
              run_started: Optional[float] = None, slower_margin: Optional[float] = None,
              profile_path: Optional[Path] = None) -> List[Dict[str, Any]]:
    """cells: dicts with model/precision/batch_profile, the paths of the benchmark, validation,
    baseline and weights JSONs, their expected provenance and the logs of the cell's jobs. A cell
    whose artifacts are missing or stale (a job failed) gets an `error` row with its first error.
    `run_started` (the summary of a failed run): a cell a job of whose chain failed in this run is
    an `error` row even where its artifacts of an earlier run are current, and an error row cites
    only this run's logs. With `slower_margin` (benchmark.slower_margin), cells slower than a
    higher precision or than PyTorch are flagged (flag_slower_cells)."""
    rows, latency, profiles, seen = [], [], [], set()
    for cell in cells:
        logs = cell.get("logs", [])
        failed_now = logged_error(logs, run_started) if run_started is not None else None
        artifacts, broken = cell_artifacts(cell)
        if artifacts is None or failed_now:
            rows.append(error_row(cell, failed_now or broken or first_error(logs, run_started)))
            profiles.append(None)
            continue
        benchmark, baseline = artifacts["benchmark"], artifacts["baseline"]
        rows.append(summary_row(cell, benchmark, artifacts["validation"], baseline,
                                artifacts["weights"], artifacts["precision_report"]))
        profiles.append(benchmark.get("layer_profile"))
        for row in latency_rows(cell, benchmark, baseline):
            key = tuple(row[c] for c in ("model", "precision", "batch_profile", "backend", "batch"))
            if key not in seen:
                seen.add(key)
                latency.append(row)
    if slower_margin is not None:
        flag_slower_cells(rows, profiles, slower_margin)
    write_csv(summary_path, SUMMARY_COLUMNS, rows)
    write_csv(latency_path, LATENCY_COLUMNS, latency)
    if profile_path is not None:
        write_csv(profile_path, LAYER_PROFILE_COLUMNS, layer_profile_rows(rows, profiles))
    return rows


def layer_profile_rows(rows: Sequence[Mapping[str, Any]],
                       profiles: Sequence[Optional[Mapping[str, Any]]]) -> List[Dict[str, Any]]:
    """The long table of each profiled cell's time per layer category (results/layer_profile.csv)."""
    table = []
    for row, profile in zip(rows, profiles):
        if not profile or not profile.get("total_ms"):
            continue
        for category in CATEGORIES:
            group = profile["categories"][category]
            table.append({**{k: row[k] for k in ("model", "precision", "batch_profile", "backend")},
                          "batch": profile["batch"], "category": category,
                          "ms": round(group["ms"], 5), "share": round(group["share"], 5),
                          "layers": group["layers"]})
    return table


def flag_slower_cells(rows: List[Dict[str, Any]], profiles: Sequence[Optional[Mapping[str, Any]]],
                      margin: float) -> None:
    """Fill `speed_flags` and `speed_why`: a cell more than `margin` slower than a cell of a
    higher precision of the same model, batch profile and backend (int8 slower than fp16, fp16
    than fp32), or than PyTorch eager fp32, says so, with its layer profile's answer to why.
    Timings whose windows disagree (`timing_stable` false) are flagged as unstable and compared
    with nothing: a comparison of noise would read as a finding."""
    for row, profile in zip(rows, profiles):
        row["speed_flags"], row["speed_why"] = "", ""
        if not row.get("latency_p50_ms"):
            continue
        flags, why = [], []
        if row.get("timing_stable") is False:
            torch_spread = row.get("torch_timing_spread")
            waited = row.get("timing_cpu_wait", "")
            row["speed_flags"] = (
                f"unstable timing (windows spread {float(row['timing_spread']):.0%}"
                + (f", PyTorch's {float(torch_spread):.0%}" if torch_spread != "" else "")
                + (f", waited for a CPU {float(waited):.0%} of the time" if waited != "" else "")
                + f"; speed-up {row['speedup_interval'] or 'unknown'})")
            continue
        p50 = float(row["latency_p50_ms"])
        for other, other_profile in zip(rows, profiles):
            if not (other.get("latency_p50_ms") and _same_series(row, other)
                    and other.get("timing_stable") is not False
                    and PRECISION_RANK.get(other["precision"], 0)
                    < PRECISION_RANK.get(row["precision"], 0)):
                continue
            faster = float(other["latency_p50_ms"])
            if p50 > faster * (1 + margin):
                flags.append(f"slower than {other['precision']} ({p50:.4g} vs {faster:.4g} ms, "
                             f"{faster / p50:.2f}x)")
                why.append(f"vs {other['precision']}: " + explain_slower(
                    profile, other_profile, row["precision"], other["precision"]))
        slower_than_torch = slower_than_pytorch(row, margin)
        if slower_than_torch:
            flags.append(slower_than_torch)
            if profile and profile.get("total_ms"):
                why.append("vs PyTorch: time goes to " + ", ".join(
                    f"{c} {profile['categories'][c]['share']:.0%}" for c in CATEGORIES
                    if profile["categories"][c]["share"] >= 0.05))
        row["speed_flags"], row["speed_why"] = "; ".join(flags), " | ".join(why)


def slower_than_pytorch(row: Mapping[str, Any], margin: float) -> str:
    """The flag of a cell more than `margin` slower than PyTorch eager fp32 ('' if it is not):
    by the side-by-side speed-up where there is one, else by the separate jobs' p50s."""
    p50, torch = float(row["latency_p50_ms"]), row.get("torch_latency_p50_ms")
    if str(row.get("speedup_timing", "")).startswith("side by side"):
        speedup = float(row["speedup_vs_torch"])
        return (f"slower than PyTorch eager fp32 (side by side: {speedup:.2f}x)"
                if speedup * (1 + margin) < 1 else "")
    if torch and p50 > float(torch) * (1 + margin):
        return f"slower than PyTorch eager fp32 ({p50:.4g} vs {float(torch):.4g} ms)"
    return ""


def _same_series(row: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    return all(row[k] == other[k] for k in ("model", "batch_profile", "backend"))


def speed_flag_lines(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """One console line per cell flagged slower (flag_slower_cells), naming the cell."""
    return [f"slower: {r['model']} {r['precision']} {r['batch_profile']} ({r['backend']}): "
            f"{r['speed_flags']}" + (f"; why: {r['speed_why']}" if r.get("speed_why") else "")
            for r in rows if r.get("speed_flags")]


def verdict_failures(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """One line per cell whose verdict fails the run (FAILING_VERDICTS), naming the cell."""
    return [f"{r['verdict']}: {r['model']} {r['precision']} {r['batch_profile']} "
            f"({r['backend']}): {r['failures']}" for r in rows if r["verdict"] in FAILING_VERDICTS]


def precision_debug_hint(rows: Sequence[Mapping[str, Any]], fallback_files: Mapping[str, str],
                         rerun: Optional[Mapping[str, Sequence[str]]] = None) -> Optional[str]:
    """For the failed cells a fallback list can help (`fallback_files`: '<model> <precision>' ->
    its debug_precision overlay): the command that names the layers losing the accuracy and
    writes a keep_precision list, and the one that applies it; both with the run's config
    (`rerun`, trtflow.commands), so that they run as printed."""
    from .commands import snakemake_command

    files = sorted({fallback_files[key] for key in (f"{r['model']} {r['precision']}" for r in rows
                                                     if r["verdict"] == "failed")
                    if key in fallback_files})
    if not files:
        return None
    rerun = rerun or {}
    return (f"for the failed int8/fp16 cells, `{snakemake_command(files, rerun)}` (or "
            f"`{snakemake_command(['debug_precision'], rerun)}`) names the layers that lose the "
            "accuracy and writes a keep_precision list; apply it with "
            f"`{snakemake_command(['all'], rerun, overlays=files)}`")


def _empty_plot(output: Path, title: str, why: str = "no cell finished") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}: {why}", ha="center", va="center")
    _save(fig, output)


def _positive(value: str) -> Optional[float]:
    """A value a log axis can show: finite and above zero (a NaN, an empty cell or an exact zero
    is not; `max(nan, floor)` is NaN, which crashed the log scaling of an all-NaN matrix)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


# one colour per precision and per PyTorch variant, one marker per batch profile: a line or a
# point says its precision by colour and its profile by marker in both plots
PRECISION_COLORS = {"fp32": "tab:blue", "fp16": "tab:orange", "int8": "tab:green"}
BASELINE_COLORS = {"torch-eager-fp32": "black", "torch-eager-fp16": "dimgray"}
PROFILE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def profile_markers(profiles: Sequence[str]) -> Dict[str, str]:
    return {p: PROFILE_MARKERS[i % len(PROFILE_MARKERS)] for i, p in enumerate(sorted(set(profiles)))}


class Series(NamedTuple):
    """One line of the latency plot: one engine precision (or PyTorch variant) in one profile."""
    label: str
    profile: str
    batches: List[int]
    latencies: List[float]
    color: str
    marker: str
    baseline: bool


def latency_series(rows: Sequence[Mapping[str, str]]) -> Dict[str, List[Series]]:
    """Per model, one series per backend/precision (or PyTorch variant) and batch profile: points
    of different profiles are never joined (the batch-1 point of one profile and batch 4 of
    another are different engines, or baselines timed in different jobs)."""
    markers = profile_markers([r["batch_profile"] for r in rows])
    points: Dict[Tuple[str, str, str, str], Dict[int, float]] = {}
    for row in rows:
        latency = _positive(row["latency_p50_ms"])
        if latency is None:
            continue
        baseline = row["backend"].startswith("torch")
        label = row["backend"] if baseline else f"{row['backend']} {row['precision']}"
        key = (row["model"], label, row["batch_profile"], row["precision"])
        points.setdefault(key, {})[int(row["batch"])] = latency
    def legend_order(key: Tuple[str, str, str, str]) -> Tuple[Any, ...]:
        """Engines fp32, fp16, int8, then PyTorch; each precision's profiles together."""
        model, label, profile, precision = key
        rank = list(PRECISION_COLORS).index(precision) if precision in PRECISION_COLORS else 99
        return model, label.startswith("torch"), rank, label, profile

    series: Dict[str, List[Series]] = {}
    for (model, label, profile, precision), by_batch in sorted(points.items(),
                                                               key=lambda kv: legend_order(kv[0])):
        baseline = label.startswith("torch")
        color = (BASELINE_COLORS.get(label, "gray") if baseline
                 else PRECISION_COLORS.get(precision, "tab:purple"))
        batches = sorted(by_batch)
        series.setdefault(model, []).append(Series(
            label, profile, batches, [by_batch[b] for b in batches], color, markers[profile],
            baseline))
    return series


def plot_latency_vs_batch(latency_csv: Path, output: Path) -> None:
    series = latency_series(_read_csv(latency_csv))
    if not series:
        return _empty_plot(output, "Latency vs batch")
    plt = _pyplot()
    models = sorted(series)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        for line in series[model]:
            ax.plot(line.batches, line.latencies, "--" if line.baseline else "-",
                    color=line.color, marker=line.marker, label=f"{line.label} · {line.profile}")
        ax.set(title=model, xlabel="batch", ylabel="p50 latency (ms)", yscale="log")
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Latency vs batch (median; one line per precision and batch profile, "
                 "PyTorch dashed)")
    _save(fig, output)


class AccuracyPoint(NamedTuple):
    """One cell in the accuracy plot; `exact`: its rel. L2 is exactly 0, drawn on the floor."""
    model: str
    precision: str
    profile: str
    speedup: float
    rel_l2: float
    exact: bool
    passed: bool


def accuracy_points(rows: Sequence[Mapping[str, str]]) -> Tuple[List[AccuracyPoint], int]:
    """The cells with a speed-up and a rel. L2 to draw, and how many others have a rel. L2 that
    a log axis cannot show (NaN, Inf: a vacuous or broken cell). An exact 0 is kept, flagged."""
    points, not_drawn = [], 0
    for row in rows:
        speedup = _positive(row["speedup_vs_torch"])
        if not row["rel_l2"] or speedup is None:
            continue  # an error row, a detector (no tensor rel. L2) or no baseline
        rel_l2 = float(row["rel_l2"])
        if not math.isfinite(rel_l2) or rel_l2 < 0:
            not_drawn += 1
            continue
        points.append(AccuracyPoint(row["model"], row["precision"], row["batch_profile"],
                                    speedup, rel_l2, rel_l2 == 0, row["verdict"] == "passed"))
    return points, not_drawn


def plot_accuracy_vs_speed(summary_csv: Path, output: Path) -> None:
    """Speed-up vs error per cell, one panel per model: colour = precision, marker = batch
    profile, hollow = not passed; an exact 0 sits on a dotted floor line labelled as exact."""
    points, not_drawn = accuracy_points(_read_csv(summary_csv))
    if not points:
        why = (f"{not_drawn} cell(s) with a non-finite rel. L2, none to draw" if not_drawn
               else "no cell with a rel. L2 and a speed-up")
        return _empty_plot(output, "Accuracy vs speed", why)
    plt = _pyplot()
    markers = profile_markers([p.profile for p in points])
    nonzero = [p.rel_l2 for p in points if not p.exact]
    # the floor an exact 0 is drawn at: a decade below the smallest error, so it reads as "less
    # than anything measured" and the dotted line says it is exact
    floor = min(nonzero) / 10 if nonzero else 1e-9
    models = sorted({p.model for p in points})
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models) + 1.0, 4.6),
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        for p in (p for p in points if p.model == model):
            color = PRECISION_COLORS.get(p.precision, "tab:purple")
            ax.scatter(p.speedup, floor if p.exact else p.rel_l2, marker=markers[p.profile], s=80,
                       edgecolors=color, facecolors=color if p.passed else "none", linewidths=1.5)
            if p.exact:
                ax.annotate("0 (exact)", (p.speedup, floor), textcoords="offset points",
                            xytext=(6, 6), fontsize=7)
        if any(p.exact for p in points if p.model == model):
            ax.axhline(floor, color="gray", linestyle=":", linewidth=1)
            ax.text(0.99, floor, "rel. L2 = 0: exact match ", transform=ax.get_yaxis_transform(),
                    ha="right", va="top", fontsize=7, color="gray")
        drawn = {floor if p.exact else p.rel_l2 for p in points if p.model == model}
        if len(drawn) == 1:  # one height (one cell): a decade either side, not a singular axis
            ax.set_ylim(min(drawn) / 10, min(drawn) * 10)
        ax.set(title=model, xlabel="speed-up vs PyTorch eager fp32 (opt batch)",
               ylabel="relative L2 error vs PyTorch (log)", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
    precisions = {p.precision for p in points}
    ordered = [p for p in PRECISION_COLORS if p in precisions] + sorted(precisions - set(PRECISION_COLORS))
    _accuracy_legend(fig, axes[0][-1], ordered, markers)
    title = "Accuracy vs speed (hollow: not passed)"
    if not_drawn:
        title += f"; {not_drawn} cell(s) with a non-finite rel. L2 not drawn"
    fig.suptitle(title)
    _save(fig, output)


def plot_layer_profile(profile_csv: Path, output: Path) -> None:
    """Each profiled cell's engine time by layer category (stacked bars, ms at the opt batch):
    where the time goes, and what a lower precision changed."""
    rows = _read_csv(profile_csv)
    if not rows:
        return _empty_plot(output, "Layer time by category")
    plt = _pyplot()
    cells: Dict[str, Dict[str, float]] = {}
    for row in rows:
        label = (f"{row['model']} {row['precision']} {row['batch_profile']} (b{row['batch']}, "
                 f"{row['backend']})")
        cells.setdefault(label, {})[row["category"]] = float(row["ms"])
    labels = sorted(cells)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.42 * len(labels)))
    left = [0.0] * len(labels)
    colors = plt.get_cmap("tab10")
    for index, category in enumerate(CATEGORIES):
        widths = [cells[label].get(category, 0.0) for label in labels]
        if not any(widths):
            continue
        ax.barh(labels, widths, left=left, color=colors(index), label=category)
        left = [a + b for a, b in zip(left, widths)]
    ax.set(xlabel="layer time (ms, median of the profiling runs)",
           title="Where each engine's time goes (per-layer profile)")
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, output)


def _accuracy_legend(fig, ax, precisions: Sequence[str], markers: Mapping[str, str]) -> None:
    """Two keys, colour = precision and marker = profile, instead of one entry per point."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="", marker="o", color=PRECISION_COLORS.get(p, "tab:purple"),
                      label=p) for p in precisions]
    handles += [Line2D([], [], linestyle="", marker=m, color="gray", markerfacecolor="none",
                       label=f"profile {profile}") for profile, m in markers.items()]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))


def _read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, output: Path) -> None:
    with atomic_path(output) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")  # legends beside the axes
    fig.clear()
