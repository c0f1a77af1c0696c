"""Every op on CUDA (CUDA C++ kernels and the Triton kernels registered as CUDA implementations)
against the CPU kernel and the reference: forward, backward, float64 gradcheck, opcheck,
float16/bfloat16 tolerances and torch.compile(mode="reduce-overhead") so stream bugs show.
Skipped, with the reason, on machines without a CUDA device (CI); run on the lent GPU machine."""

from __future__ import annotations

import math

import pytest
import torch

import fremure_ext

from conftest import FWD_TOL, GRAD_TOL, HAS_CUDA

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; CI machines have none")

HALF_TOL = {torch.float16: dict(atol=2e-2, rtol=2e-2), torch.bfloat16: dict(atol=8e-2, rtol=5e-2)}


def _frame_offsets(counts):
    return torch.tensor([0] + list(counts)).cumsum(0)


def _case_freq_gate_blend(dtype):
    x = torch.randn(37, 1936, dtype=dtype)
    gate = torch.rand(1936, dtype=dtype)
    valid = torch.rand(37) > 0.2
    return (lambda a, g: fremure_ext.freq_gate_blend(a, g, valid.to(a.device))), [x, gate]


def _case_gated_fusion(dtype):
    n, d, dc = 29, 96, 64
    tensors = [torch.randn(n, d, dtype=dtype), torch.randn(n, d, dtype=dtype), torch.randn(dc, dtype=dtype),
               torch.randn(d, 2 * d + dc, dtype=dtype) * 0.1, torch.randn(d, dtype=dtype)]
    return (lambda h, t, c, w, b: fremure_ext.gated_fusion(h, t, c, w, b)), tensors


def _case_window(dtype):
    counts = [2, 0, 3, 1, 4, 2]
    offsets = _frame_offsets(counts)
    x = torch.randn(sum(counts), 40, dtype=dtype)

    def run(a):
        packed = fremure_ext.window_pack(a, offsets.to(a.device), 2, 1, padded=False)
        return fremure_ext.window_unpack(packed.out, packed.src_index, None, a.shape[0], "mean")

    return run, [x]


def _case_segment_attention(dtype):
    offsets = _frame_offsets([3, 0, 5, 1, 12])
    t = int(offsets[-1])
    q, k, v = (torch.randn(t, 8, 242, dtype=dtype) for _ in range(3))
    return (lambda a, b, c: fremure_ext.segment_attention(a, b, c, offsets.to(a.device))), [q, k, v]


def _case_gmm_mixture(dtype):
    mu, var_raw, pi_logit = (torch.randn(6, 23, 17, dtype=dtype) for _ in range(3))
    noise = torch.randn(6, 23, 17, dtype=dtype)
    tau = torch.tensor(0.8, dtype=dtype)

    def run(m, r, p, t):
        return fremure_ext.gmm_mixture(m, r, p, t, noise=noise.to(m.device, m.dtype), uncertainty=True)

    return run, [mu, var_raw, pi_logit, tau]


def _case_bayes_mc(dtype):
    mu, logvar = torch.randn(23, 3, dtype=dtype), torch.randn(23, 3, dtype=dtype)
    noise = torch.randn(6, 23, 3, dtype=dtype)
    return (lambda m, lv: fremure_ext.bayes_mc(m, lv, noise=noise.to(m.device, m.dtype), samples=6,
                                               activation="softmax")), [mu, logvar]


CASES = {
    "freq_gate_blend": _case_freq_gate_blend,
    "gated_fusion": _case_gated_fusion,
    "window": _case_window,
    "segment_attention": _case_segment_attention,
    "gmm_mixture": _case_gmm_mixture,
    "bayes_mc": _case_bayes_mc,
}


def _outputs(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _run_with_grads(fn, tensors, device, dtype=None):
    leaves = [t.to(device=device, dtype=dtype or t.dtype).detach().requires_grad_() for t in tensors]
    outs = _outputs(fn(*leaves))
    weights = [torch.ones_like(o) * (i + 1) for i, o in enumerate(outs)]
    loss = sum((o.float() * w.float()).sum() for o, w in zip(outs, weights))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_matches_cpu_kernel_forward_backward(name):
    fn, tensors = CASES[name](torch.float32)
    cpu_out, cpu_grads = _run_with_grads(fn, tensors, "cpu")
    gpu_out, gpu_grads = _run_with_grads(fn, tensors, "cuda")
    for a, b in zip(gpu_out, cpu_out):
        torch.testing.assert_close(a.cpu(), b, **FWD_TOL)
    for a, b in zip(gpu_grads, cpu_grads):
        if b is not None:
            torch.testing.assert_close(a.cpu(), b, **GRAD_TOL)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_types_track_float32(name, dtype):
    fn, tensors = CASES[name](torch.float32)
    want, _ = _run_with_grads(fn, tensors, "cuda")
    got, grads = _run_with_grads(fn, tensors, "cuda", dtype)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, **HALF_TOL[dtype])
    assert all(g is None or torch.isfinite(g.float()).all() for g in grads)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_gradcheck_float64(name):
    fn, small = CASES[name](torch.float64)
    if name == "freq_gate_blend":
        small = [small[0][:6, :24].contiguous(), small[1][:24].contiguous()]
        fn = lambda a, g: fremure_ext.freq_gate_blend(a, g)  # noqa: E731
    if name == "segment_attention":
        offsets = _frame_offsets([2, 0, 3])
        small = [torch.randn(5, 2, 7, dtype=torch.float64) for _ in range(3)]
        fn = lambda a, b, c: fremure_ext.segment_attention(a, b, c, offsets.cuda())  # noqa: E731
    leaves = [t.cuda().requires_grad_() for t in small]
    assert torch.autograd.gradcheck(fn, leaves, atol=1e-6, rtol=1e-4)


def test_cuda_opcheck_every_op():
    x = torch.randn(9, 16, device="cuda")
    gate = torch.rand(16, device="cuda")
    torch.library.opcheck(torch.ops.fremure.freq_gate_blend.default, (x, gate, None))
    offsets = _frame_offsets([2, 3, 4]).cuda()
    torch.library.opcheck(torch.ops.fremure.window_pack.default, (x, offsets, 2, 1, False))
    q = torch.randn(9, 2, 8, device="cuda")
    torch.library.opcheck(torch.ops.fremure.segment_attention.default, (q, q.clone(), q.clone(), offsets, 0.3))
    h = torch.randn(5, 16, device="cuda")
    w = torch.randn(16, 2 * 16 + 4, device="cuda")
    torch.library.opcheck(torch.ops.fremure.gated_fusion.default,
                          (h, h.clone(), torch.randn(4, device="cuda"), w, None, 1.5, 0.02, 0.98))
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
