"""FREMURE_CPU_ISA=baseline|avx2|avx512 caps the CPU kernel variant every op runs, so the portable
default build is proven on the baseline and AVX2 code paths even on an AVX-512 machine."""

from __future__ import annotations

import bisect
import os
import shutil
import subprocess
import sys

import pytest

import fremure_ext
from fremure_ext import _loader
from fremure_ext.registry import OPS

ORDER = ["baseline", "avx2", "avx512"]
# The test files of the ops whose CPU kernels are compiled per ISA level.
OP_TESTS = [f"tests/test_{module}.py" for module in dict.fromkeys(op.module for op in OPS if op.cpu_isa)]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _expected(cap: str) -> str:
    supported = _loader._C.supported_cpu_isa()
    widest_compiled = fremure_ext.build_info()["cpu_isas"][-1]
    return ORDER[min(ORDER.index(cap), ORDER.index(supported), ORDER.index(widest_compiled))]


def test_build_is_portable_with_every_variant():
    info = fremure_ext.build_info()
    assert info["cpu_isas"] == (ORDER if info["cpu_isas"] != ["baseline"] else ["baseline"])
    # Every ISA copy registered the same kernel tables (one per op and compute dtype), so no op
    # silently falls back to a narrower copy.
    tables = info["cpu_kernel_tables"]
    assert tables["baseline"] > 0
    assert [tables[isa] for isa in info["cpu_isas"]] == [tables["baseline"]] * len(info["cpu_isas"])
    assert all(tables[isa] == 0 for isa in ORDER if isa not in info["cpu_isas"])


@pytest.mark.parametrize("cap", ORDER)
def test_cap_selects_variant(monkeypatch, cap):
    monkeypatch.setenv("FREMURE_CPU_ISA", cap)
    assert _loader._C.selected_cpu_isa() == _expected(cap)


def test_unset_selects_the_best_supported(monkeypatch):
    monkeypatch.delenv("FREMURE_CPU_ISA", raising=False)
    assert _loader._C.selected_cpu_isa() == _loader._C.supported_cpu_isa()


@pytest.mark.parametrize("bad", ["base", "default", "AVX2", "sse"])
def test_unknown_cap_is_an_error(monkeypatch, bad):
    monkeypatch.setenv("FREMURE_CPU_ISA", bad)
    with pytest.raises(RuntimeError, match="FREMURE_CPU_ISA must be one of baseline, avx2, avx512"):
        _loader._C.selected_cpu_isa()


@pytest.mark.slow
@pytest.mark.parametrize("cap", ["baseline", "avx2"])
def test_op_tests_pass_under_cap(cap):
    """The op test files in a subprocess with the cap set for the whole run: what a CPU without
    AVX-512 (avx2) or without AVX2 (baseline) executes."""
    env = dict(os.environ, FREMURE_CPU_ISA=cap)
    check = subprocess.run([sys.executable, "-c", "import fremure_ext; print(fremure_ext._loader._C.selected_cpu_isa())"],
                           env=env, capture_output=True, text=True, check=True)
    assert check.stdout.strip() == _expected(cap)
    run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *OP_TESTS],
                         env=env, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def _wide_instruction_addresses(library: str) -> list[int]:
    """Addresses of the instructions in ``library`` that touch ymm/zmm registers, sorted."""
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", library], capture_output=True, text=True,
                                 check=True).stdout
    return sorted(int(line.split(":", 1)[0], 16) for line in disassembly.splitlines()
                  if ("%ymm" in line or "%zmm" in line) and line[:1] == " ")


def _function_ranges(library: str) -> list[tuple[int, int, str]]:
    """(start, end, demangled name) of the functions in the symbol table; a stripped library (an
    installed wheel) has only its dynamic symbols, which are the ones the linker merges across
    objects anyway."""
    for table in ([], ["-D"]):
        listing = subprocess.run(["nm", *table, "-S", "-C", "--defined-only", library], capture_output=True,
                                 text=True).stdout
        ranges = []
        for line in listing.splitlines():
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[2] in "TtWw" and len(parts[2]) == 1:
                start = int(parts[0], 16)
                ranges.append((start, start + int(parts[1], 16), parts[3]))
        if ranges:
            return sorted(ranges)
    return []


def _functions_using_wide_vectors(library: str) -> tuple[int, list[str]]:
    """How many instructions touch ymm/zmm, and the names of the functions that hold them."""
    wide = _wide_instruction_addresses(library)
    names = set()
    for start, end, name in _function_ranges(library):
        i = bisect.bisect_left(wide, start)
        if i < len(wide) and wide[i] < end:
            names.add(name)
    return len(wide), sorted(names)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("nm") is None, reason="needs binutils")
def test_only_kernel_regions_use_wide_vectors():
    """The AVX2/AVX-512 copies compile only their own kernel region for the wider ISA: no function
    outside an anonymous namespace (a kernel region) has ymm/zmm instructions. A header inline
    function emitted with wide instructions would be merged by the linker with the baseline copy's
    and could run on a CPU without AVX2 (SIGILL)."""
    if fremure_ext.build_info()["cpu_isas"] == ["baseline"] or fremure_ext.build_info()["native_cpu"]:
        pytest.skip("only the multi-ISA portable build has wider copies")
    count, functions = _functions_using_wide_vectors(_loader._C.__file__)
    assert count > 0, "the AVX2/AVX-512 copies should use ymm/zmm registers"
    outside = [name for name in functions if "(anonymous namespace)" not in name]
    assert not outside, outside[:10]
