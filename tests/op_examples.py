"""One small example call per op of fremure_ext.registry, for the tests that run every op
(tests/test_registry.py, tests/test_cuda_ops.py) and the CI smoke test (.ci/smoke.py).

``example(name, dtype, small=False)`` returns ``(fn, tensors)``: ``fn(*tensors)`` calls the public
wrapper of op ``name`` and is differentiable in every tensor of ``tensors``; the other inputs (offsets,
indices, noise) live in ``fn`` and follow the device of its first argument, so the same example runs
on CPU and CUDA. The default sizes cross the CUDA kernels' tile edges; ``small=True`` gives sizes a
float64 gradcheck affords. A new op adds one function named after it here (docs/adding-an-op.md).
"""

from __future__ import annotations

import sys
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fremure_ext
from fremure_ext.registry import OPS

Example = tuple[Callable[..., object], list[torch.Tensor]]


def example(name: str, dtype: torch.dtype, small: bool = False) -> Example:
    """The example of op ``name`` (a registry name) with float tensors of ``dtype``."""
    if name not in {op.name for op in OPS}:
        raise ValueError(f"name must be an op of fremure_ext.registry.OPS, got {name!r}")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    maker = getattr(sys.modules[__name__], f"_{name}", None)
    if maker is None:
        raise LookupError(f"tests/op_examples.py has no example for {name}: add a function _{name}(dtype, small)")
    return maker(dtype, small)


def _offsets(counts: list[int]) -> torch.Tensor:
    return torch.tensor([0, *counts]).cumsum(0)


def _freq_gate_blend(dtype, small):
    rows, width = (6, 24) if small else (37, 1936)
    valid = torch.rand(rows) > 0.2
    x, gate = torch.randn(rows, width, dtype=dtype), torch.rand(width, dtype=dtype)
    return (lambda a, g: fremure_ext.freq_gate_blend(a, g, valid.to(a.device))), [x, gate]


def _gated_fusion(dtype, small):
    n, d, dc = (5, 8, 4) if small else (29, 96, 64)
    tensors = [torch.randn(n, d, dtype=dtype), torch.randn(n, d, dtype=dtype), torch.randn(dc, dtype=dtype),
               torch.randn(d, 2 * d + dc, dtype=dtype) * 0.1, torch.randn(d, dtype=dtype)]
    return fremure_ext.gated_fusion, tensors


_WINDOW_COUNTS = [2, 0, 3, 1, 4, 2]


def _window_pack(dtype, small):
    offsets = _offsets(_WINDOW_COUNTS)
    x = torch.randn(sum(_WINDOW_COUNTS), 6 if small else 40, dtype=dtype)
    return (lambda a: fremure_ext.window_pack(a, offsets.to(a.device), 2, 1, padded=False).out), [x]


def _window_unpack(dtype, small):
    rows = sum(_WINDOW_COUNTS)
    packed = fremure_ext.window_pack(torch.zeros(rows, 1), _offsets(_WINDOW_COUNTS), 2, 1, padded=False)
    y = torch.randn(packed.out.shape[0], 6 if small else 40, dtype=dtype)
    return (lambda b: fremure_ext.window_unpack(b, packed.src_index.to(b.device), None, rows, "mean")), [y]


def _segment_attention(dtype, small):
    counts, heads, dim = ([2, 0, 3], 2, 7) if small else ([3, 0, 5, 1, 12], 8, 242)
    offsets = _offsets(counts)
    q, k, v = (torch.randn(sum(counts), heads, dim, dtype=dtype) for _ in range(3))
    return (lambda a, b, c: fremure_ext.segment_attention(a, b, c, offsets.to(a.device))), [q, k, v]


def _gmm_mixture(dtype, small):
    shape = (3, 4, 5) if small else (6, 23, 17)
    mu, var_raw, pi_logit, noise = (torch.randn(shape, dtype=dtype) for _ in range(4))
    tau = torch.tensor(0.8, dtype=dtype)

    def run(m, r, p, t):
        return fremure_ext.gmm_mixture(m, r, p, t, noise=noise.to(m.device, m.dtype), uncertainty=True)

    return run, [mu, var_raw, pi_logit, tau]


def _bayes_mc(dtype, small):
    rows, classes, samples = (4, 3, 3) if small else (23, 3, 6)
    mu, logvar = torch.randn(rows, classes, dtype=dtype), torch.randn(rows, classes, dtype=dtype)
    noise = torch.randn(samples, rows, classes, dtype=dtype)

    def run(m, lv):
        return fremure_ext.bayes_mc(m, lv, noise=noise.to(m.device, m.dtype), samples=samples, activation="softmax")

    return run, [mu, logvar]


class _Calls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fremure":
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def fremure_calls(fn: Callable[..., object], tensors: list[torch.Tensor]) -> list[tuple]:
    """The ``torch.ops.fremure`` calls ``fn(*tensors)`` makes, as ``(op overload, args, kwargs)``
    (what ``torch.library.opcheck`` takes), in call order."""
    with _Calls() as mode:
        fn(*tensors)
    return mode.calls
