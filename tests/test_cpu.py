"""trtflow.cpu: the instruction set from the CPU's flags, and ONNX Runtime's int8 form for it.

The detection is faked with the flags of real CPUs, so the choice for every CPU kind is tested on
whichever machine runs the tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from trtflow.cpu import INT8_FORMS, cpu_flags, instruction_set, int8_form

# /proc/cpuinfo flags (the relevant part) of CPU kinds CI and users run on
AVX2_EPYC_ROME = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni"
VNNI_EPYC_GENOA = AVX2_EPYC_ROME + " avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16"
AVX512_SKYLAKE = AVX2_EPYC_ROME + " avx512f avx512dq avx512cd avx512bw avx512vl"
AVX_VNNI_ALDERLAKE = AVX2_EPYC_ROME + " avx_vnni"
SSE_ONLY = "fpu sse sse2 ssse3 sse4_1 sse4_2"


@pytest.mark.parametrize("machine,flags,isa,form", [
    ("x86_64", AVX2_EPYC_ROME, "avx2", "u8u8"),
    ("x86_64", VNNI_EPYC_GENOA, "vnni", "u8s8"),
    ("x86_64", AVX512_SKYLAKE, "avx512", "u8u8"),
    ("x86_64", AVX_VNNI_ALDERLAKE, "vnni", "u8s8"),
    ("AMD64", SSE_ONLY, "x86-64", "u8u8"),
    ("aarch64", "fp asimd evtstrm aes crc32 asimddp", "arm64", "u8s8"),
    ("ppc64le", "", "other", "u8u8"),
])
def test_instruction_set_and_int8_form(machine: str, flags: str, isa: str, form: str) -> None:
    assert instruction_set(machine, flags.split()) == isa
    assert int8_form(isa) == form


def test_u8s8_only_where_it_does_not_saturate() -> None:
    """VPMADDUBSW (x86 without VNNI) saturates U8S8 sums: those CPUs never get U8S8."""
    assert {isa for isa, form in INT8_FORMS.items() if form == "u8s8"} == {"vnni", "arm64"}


def test_cpu_flags_reads_the_first_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_vnni\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_this_machine_is_detected_as_what_its_cpuinfo_says() -> None:
    """Say which kind ran the tests: the -ra summary shows this line for a skipped run too."""
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags here")
    isa = instruction_set()
    assert isa in INT8_FORMS
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        assert isa == "vnni"
    elif "avx2" in flags and "avx512f" not in flags:
        assert isa == "avx2"
