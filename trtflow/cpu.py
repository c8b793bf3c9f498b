"""The CPU's instruction set, and the int8 form ONNX Runtime runs right on it (stdlib only).

ONNX Runtime's x86 int8 kernels multiply uint8 activations by int8 weights (U8S8). Without VNNI
they use VPMADDUBSW, whose int16 sums saturate: ONNX Runtime's quantization guide says so and
names the remedies, 7-bit weights (reduce_range) or U8U8. With VNNI (AVX512-VNNI or AVX-VNNI) the
products go straight to int32, so U8S8 is exact; on Arm64 U8S8 has no saturation either.

Measured (MobileNetV2, ImageNet weights, rel. L2 vs PyTorch fp32; AVX2 emulated with
`qemu-x86_64 -cpu Haswell`, where a u8 x s8 MatMulInteger probe returns the int16-saturated sum):
U8S8 0.187 with VNNI but 0.361 on AVX2; reduce_range 0.233 on both (top-1 agreement 0.625);
U8U8 0.198 on both. So U8U8 where U8S8 saturates, U8S8 where it does not (2.3x faster than U8U8
with VNNI). The form changes the int8 graph, and ONNX Runtime's graph optimisations (NCHWc block
size) change with the instruction set, so both are part of the ONNX Runtime artifacts' paths.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Dict, Iterable, Optional, Set

# instruction-set name -> ONNX Runtime int8 form
INT8_FORMS: Dict[str, str] = {
    "vnni": "u8s8",      # AVX512-VNNI / AVX-VNNI: no saturation
    "avx512": "u8u8",    # AVX-512 without VNNI: U8S8 (VPMADDUBSW) saturates
    "avx2": "u8u8",      # AVX2 without VNNI: U8S8 (VPMADDUBSW) saturates
    "x86-64": "u8u8",    # SSE only
    "arm64": "u8s8",     # no saturation (ORT: U8S8 can be faster on low-end Arm64)
    "other": "u8u8",
}
# int8 form -> quantize_static's activation and weight types
FORM_SETTINGS: Dict[str, Dict[str, str]] = {
    "u8s8": {"activation_type": "QUInt8", "weight_type": "QInt8"},
    "u8u8": {"activation_type": "QUInt8", "weight_type": "QUInt8"},
}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> Set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def instruction_set(machine: Optional[str] = None, flags: Optional[Iterable[str]] = None) -> str:
    """vnni, avx512, avx2, x86-64, arm64 or other: what picks ONNX Runtime's int8 kernels."""
    machine = (machine or platform.machine()).lower()
    flags = set(cpu_flags() if flags is None else flags)
    if machine in ("aarch64", "arm64"):
        return "arm64"
    if machine not in ("x86_64", "amd64"):
        return "other"
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "vnni"
    if {"avx512f", "avx512bw"} <= flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "x86-64"


def int8_form(isa: str) -> str:
    return INT8_FORMS.get(isa, INT8_FORMS["other"])
