"""Every op on CUDA (CUDA C++ kernels and the Triton kernels registered as CUDA implementations)
against the CPU kernel and the reference: forward, backward, float64 gradcheck, opcheck,
float16/bfloat16 tolerances and torch.compile(mode="reduce-overhead") so stream bugs show.
Skipped, with the reason, on machines without a CUDA device (CI); run on the lent GPU machine."""

from __future__ import annotations

import math

import pytest
import torch

import fremure_ext
from fremure_ext.registry import OPS

from conftest import FWD_TOL, GRAD_TOL, HAS_CUDA
from op_examples import example, fremure_calls

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; CI machines have none")

HALF_TOL = {torch.float16: dict(atol=2e-2, rtol=2e-2), torch.bfloat16: dict(atol=8e-2, rtol=5e-2)}


# The per-op inputs are tests/op_examples.py's: every op of the registry with a CUDA implementation.
CUDA_OPS = [op.name for op in OPS if op.cuda or op.triton]


def _outputs(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _run_with_grads(fn, tensors, device, dtype=None):
    leaves = [t.to(device=device, dtype=dtype or t.dtype).detach().requires_grad_() for t in tensors]
    outs = _outputs(fn(*leaves))
    weights = [torch.ones_like(o) * (i + 1) for i, o in enumerate(outs)]
    loss = sum((o.float() * w.float()).sum() for o, w in zip(outs, weights))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("name", CUDA_OPS)
def test_cuda_matches_cpu_kernel_forward_backward(name):
    fn, tensors = example(name, torch.float32)
    cpu_out, cpu_grads = _run_with_grads(fn, tensors, "cpu")
    gpu_out, gpu_grads = _run_with_grads(fn, tensors, "cuda")
    for a, b in zip(gpu_out, cpu_out):
        torch.testing.assert_close(a.cpu(), b, **FWD_TOL)
    for a, b in zip(gpu_grads, cpu_grads):
        if b is not None:
            torch.testing.assert_close(a.cpu(), b, **GRAD_TOL)


@pytest.mark.parametrize("name", CUDA_OPS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_types_track_float32(name, dtype):
    fn, tensors = example(name, torch.float32)
    want, _ = _run_with_grads(fn, tensors, "cuda")
    got, grads = _run_with_grads(fn, tensors, "cuda", dtype)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, **HALF_TOL[dtype])
    assert all(g is None or torch.isfinite(g.float()).all() for g in grads)


@pytest.mark.parametrize("name", CUDA_OPS)
def test_cuda_gradcheck_float64(name):
    fn, small = example(name, torch.float64, small=True)
    leaves = [t.cuda().requires_grad_() for t in small]
    assert torch.autograd.gradcheck(fn, leaves, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", CUDA_OPS)
def test_cuda_opcheck_every_op(name):
    fn, tensors = example(name, torch.float32, small=True)
    calls = fremure_calls(fn, [t.cuda() for t in tensors])
    assert calls
    for func, args, kwargs in calls:
        torch.library.opcheck(func, args, kwargs)


def test_cuda_opcheck_seed_mode():
    """The examples pass noise tensors; the random heads' seed mode is checked here."""
    mu = torch.randn(3, 5, 6, device="cuda")
    torch.library.opcheck(torch.ops.fremure.gmm_mixture.default,
                          (mu, mu.clone(), mu.clone(), torch.tensor(1.0, device="cuda"), None, 7, 1e-6, 1e-3, 5.0,
                           "sigmoid", True))
    torch.library.opcheck(torch.ops.fremure.bayes_mc.default,
                          (mu[0], mu[1], None, 7, 6, "sigmoid"))


def test_cuda_compile_reduce_overhead_runs_on_the_right_stream():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(64, 64)
            self.gate = torch.nn.Parameter(torch.rand(64))

        def forward(self, x):
            y = fremure_ext.freq_gate_blend(self.proj(x), self.gate)
            return fremure_ext.bayes_mc(y[:, :6], y[:, 6:12], seed=3, samples=4)

    model = Block().cuda()
    x = torch.randn(32, 64, device="cuda")
    eager = model(x)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        for _ in range(3):
            out = compiled(x)
    torch.cuda.synchronize()
    torch.testing.assert_close(out, eager, **FWD_TOL)


def test_cuda_seed_mode_is_reproducible_and_matches_cpu_philox():
    mu, logvar = torch.randn(40, 17), torch.randn(40, 17)
    cpu = fremure_ext.bayes_mc(mu, logvar, seed=11, samples=6)
    gpu = fremure_ext.bayes_mc(mu.cuda(), logvar.cuda(), seed=11, samples=6)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4)
    assert math.isfinite(float(gpu.sum()))
