"""fremure_ext.registry, the one Python list of the ops, against everything else that names them: the
schemas the extension registered and csrc/fremure.cpp declares, the kernel sources, the Python
modules, tests, benchmarks and examples each op must have (docs/adding-an-op.md)."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys

import pytest
import torch

import fremure_ext
from fremure_ext.dispatch import has_kernel
from fremure_ext.registry import MODULES, OPS

from conftest import REPO
from op_examples import example, fremure_calls

NAMES = [op.name for op in OPS]


def _registry_schemas() -> set[str]:
    return {name for op in OPS for name in (op.name, op.backward)}


def test_registry_matches_the_registered_schemas():
    registered = {s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("fremure::")}
    assert registered == _registry_schemas()


def test_registry_matches_the_schema_file():
    declared = re.findall(r'm\.def\("(\w+)\(', (REPO / "csrc" / "fremure.cpp").read_text())
    assert len(declared) == len(set(declared))
    assert set(declared) == _registry_schemas()


def test_names_are_unique_and_modules_in_order():
    assert len(NAMES) == len(set(NAMES))
    assert list(MODULES) == list(dict.fromkeys(op.module for op in OPS))


@pytest.mark.parametrize("op", OPS, ids=NAMES)
def test_kernel_flags_match_the_sources(op):
    cpu_source = (REPO / "csrc" / "cpu" / f"{op.name}.cpp").read_text()
    has_region = re.search(r"^FREMURE_ISA_KERNELS_BEGIN", cpu_source, re.MULTILINE) is not None
    assert has_region == op.cpu_isa
    assert (REPO / "csrc" / "cuda" / f"{op.name}.cu").is_file() == op.cuda
    for name in (op.name, op.backward):
        assert has_kernel(name, "cpu")
        if fremure_ext.build_info()["cuda"]:
            assert has_kernel(name, "cuda") == (op.cuda or op.name in fremure_ext.TRITON_REGISTERED)


@pytest.mark.parametrize("op", OPS, ids=NAMES)
def test_every_op_has_its_python_files(op):
    wrapper_module = importlib.import_module(f"fremure_ext.ops.{op.module}")
    assert getattr(fremure_ext, op.name) is getattr(wrapper_module, op.name)
    assert callable(getattr(wrapper_module, f"check_{op.name}"))
    assert callable(getattr(fremure_ext.reference, op.name))
    if op.triton:
        launchers = importlib.import_module(f"fremure_ext.triton.{op.module}")
        assert callable(getattr(launchers, f"{op.name}_forward")) and callable(getattr(launchers, f"{op.name}_backward"))


@pytest.mark.parametrize("module", MODULES)
def test_every_module_has_tests_and_a_benchmark(module):
    assert (REPO / "tests" / f"test_{module}.py").is_file()
    assert "\ndef cases(" in (REPO / "benchmarks" / f"bench_{module}.py").read_text()


@pytest.mark.parametrize("op", OPS, ids=NAMES)
def test_every_op_has_an_example_that_calls_it(op):
    fn, tensors = example(op.name, torch.float32, small=True)
    called = [func._schema.name for func, _, _ in fremure_calls(fn, tensors)]
    assert f"fremure::{op.name}" in called


def test_example_rejects_unknown_names():
    with pytest.raises(ValueError, match="name must be an op of fremure_ext.registry.OPS"):
        example("freq_gate", torch.float32)


def _object_flags(ninja: str, target: str) -> dict[str, str]:
    """CPU source name -> compiler FLAGS of its object in ``target`` (``_C``, ``_C_isa1``, ...) in a
    build.ninja."""
    blocks = re.findall(rf"^build CMakeFiles/{target}\.dir/csrc/cpu/(\w+)\.cpp\.o:.*\n((?:  .*\n)*)", ninja, re.MULTILINE)
    return {name: re.search(r"^  FLAGS = (.*)$", body, re.MULTILINE).group(1) for name, body in blocks}


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ninja") is None, reason="needs cmake and ninja")
def test_cmake_reads_the_per_isa_sources_and_their_flags_from_the_sources(tmp_path):
    """Configure only (a few seconds): the AVX2 / AVX-512 copies hold exactly the ops with
    ``cpu_isa=True``, and a ``// FREMURE_COMPILE_OPTIONS:`` line reaches the compiler."""
    build = tmp_path / "build"
    run = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), "-G", "Ninja", "-DFREMURE_CUDA=OFF",
                          f"-DPython_EXECUTABLE={sys.executable}"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    ninja = (build / "build.ninja").read_text()
    if "-DFREMURE_MULTI_ISA=1" not in ninja:
        pytest.skip("the per-ISA copies are built with GCC on x86-64 only")
    for target in ("_C_isa1", "_C_isa2"):
        assert set(_object_flags(ninja, target)) == {op.name for op in OPS if op.cpu_isa}
    for name, flags in _object_flags(ninja, "_C").items():
        marked = "// FREMURE_COMPILE_OPTIONS: -fno-trapping-math" in (REPO / "csrc" / "cpu" / f"{name}.cpp").read_text()
        assert ("-fno-trapping-math" in flags.split()) == marked, name
