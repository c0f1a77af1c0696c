"""The one Python list of the torch.ops.fremure ops, which everything else in Python reads; the other
list is csrc/fremure.cpp's schemas (tests/test_registry.py keeps them equal; docs/adding-an-op.md)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class OpSpec:
    """Forward op ``fremure::<name>`` (gradient: ``<name>_backward``), wrapper ``fremure_ext.<name>``,
    reference ``fremure_ext.reference.<name>``; files ``<module>.py`` in fremure_ext/ops, reference and
    triton, tests/test_<module>.py, benchmarks/bench_<module>.py. Kernels: ``cpu_isa``, CPU ones compiled
    per ISA level (a FREMURE_ISA_KERNELS_BEGIN region); ``cuda``, CUDA C++ in csrc/cuda/; ``triton``, the
    launchers ``<name>_forward`` / ``<name>_backward``."""

    name: str
    module: str
    cpu_isa: bool = False
    cuda: bool = False
    triton: bool = False

    @property
    def backward(self) -> str:
        return f"{self.name}_backward"


OPS = (
    OpSpec("freq_gate_blend", "freq_gate_blend", cuda=True),
    OpSpec("gated_fusion", "gated_fusion", cpu_isa=True, triton=True),
    OpSpec("window_pack", "window", cuda=True),
    OpSpec("window_unpack", "window", cuda=True),
    OpSpec("segment_attention", "segment_attention", cpu_isa=True, triton=True),
    OpSpec("gmm_mixture", "gmm_mixture", cpu_isa=True, triton=True),
    OpSpec("bayes_mc", "bayes_mc", cpu_isa=True, triton=True),
)
MODULES = tuple(dict.fromkeys(op.module for op in OPS))  # in registry order, each once


def export(package: str, namespace: dict, modules: tuple[str, ...] = MODULES) -> list[str]:
    """Imports ``<package>.<m>`` for each m of ``modules``, copies its ``__all__`` into ``namespace``; returns them."""
    names = []
    for module in (importlib.import_module(f"{package}.{m}") for m in modules):
        namespace.update((name, getattr(module, name)) for name in module.__all__)
        names += module.__all__
    return names
