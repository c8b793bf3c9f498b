#!/usr/bin/env python3
"""Write the GPU benchmark table (Markdown) from one run of benchmarks/gpu/run.sh."""
import csv
import datetime
import json
import platform
import sys
from pathlib import Path


def main(results: Path, output: Path) -> None:
    rows = list(csv.DictReader(open(results / "summary.csv")))
    baseline = json.loads(next((results / "baseline").rglob("*.json")).read_text())
    warm = {p.stem: json.loads(p.read_text()) for p in (results / "engines").rglob("*.json")
            if p.parent.name != "cold" and not p.name.startswith("timing")}
    cold = {p.stem: json.loads(p.read_text()) for p in (results / "cold").glob("*.json")}
    any_sidecar = next(iter(cold.values()))
    torch = {v["variant"]: v["batches"][-1] for v in baseline["variants"]}
    eager16 = torch["torch-eager-fp16"]["latency_p50_ms"]
    lines = [
        f"# GPU benchmark: ResNet-50, batch 32",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- GPU: {any_sidecar['device_name']} (compute capability {any_sidecar['compute_capability']})",
        f"- TensorRT {any_sidecar['version']}; PyTorch {baseline['torch']}; Python {platform.python_version()} (torch side)",
        "- one workflow run (`benchmarks/gpu/run.sh`): every number below was measured in it, on the same GPU,",
        "  on the same 32 preprocessed photos; engine timings are CUDA-event times of `execute_async_v3`",
        "  with inputs on the device, PyTorch timings CUDA-event times of the forward pass, medians of up to 200 runs.",
        "",
        "| engine / baseline | p50 ms | p99 ms | images/s | vs eager fp32 | vs eager fp16 | rel. L2 vs PyTorch | layer precisions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    eager32 = torch["torch-eager-fp32"]["latency_p50_ms"]
    for name, point in torch.items():
        p50 = point["latency_p50_ms"]
        lines.append(f"| PyTorch {name.replace('torch-', '')} | {p50:.3f} | {point['latency_p99_ms']:.3f} | "
                     f"{point['throughput']:.0f} | {eager32 / p50:.2f}x | {eager16 / p50:.2f}x | | |")
    for row in rows:
        p50 = float(row["latency_p50_ms"])
        lines.append(f"| TensorRT {row['precision']} | {p50:.3f} | {float(row['latency_p99_ms']):.3f} | "
                     f"{float(row['throughput']):.0f} | {eager32 / p50:.2f}x | {eager16 / p50:.2f}x | "
                     f"{row['rel_l2']} | {row['layer_precisions']} |")
    fp16 = next(r for r in rows if r["precision"] == "fp16")
    ratio = eager16 / float(fp16["latency_p50_ms"])
    lines += ["", f"fp16 engine vs PyTorch eager fp16: **{ratio:.2f}x** (bar: 2.2x) — "
              f"{'met' if ratio >= 2.2 else 'NOT met'}.", "",
              "## Engine build time: cold vs warm timing cache", "",
              "| engine | cold build s | warm build s | warm / cold |", "|---|---|---|---|"]
    for stem in sorted(cold):
        c, w = cold[stem]["build_seconds"], warm.get(stem, {}).get("build_seconds")
        if w is not None:
            lines.append(f"| {stem} | {c:.1f} | {w:.1f} | {w / c:.2f} |")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
