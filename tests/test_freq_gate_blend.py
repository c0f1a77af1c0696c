"""freq_gate_blend: CPU kernel vs reference, autograd, opcheck, compile, fixture, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import fremure_ext
from fremure_ext import reference

from conftest import FWD_TOL, GRAD_TOL, NO_KERNEL_PATHS, call_without_kernel, load_fixture


def _inputs(shape, dtype=torch.float32, per_row=False, with_valid=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype) * 3 + 1
    gate_shape = shape if per_row else shape[-1:]
    gate = torch.rand(*gate_shape, generator=g, dtype=dtype)
    valid = (torch.rand(*shape[:-1], generator=g) > 0.3) if with_valid else None
    return x, gate, valid


@pytest.mark.parametrize("shape", [(0, 8), (1, 8), (7, 1936), (3, 5, 48), (13, 17)])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("with_valid", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_forward_backward(shape, per_row, with_valid, dtype):
    x, gate, valid = _inputs(shape, dtype, per_row, with_valid)
    xs, gs = x.clone().requires_grad_(), gate.clone().requires_grad_()
    xr, gr = x.clone().requires_grad_(), gate.clone().requires_grad_()
    out = fremure_ext.freq_gate_blend(xs, gs, valid)
    ref = reference.freq_gate_blend(xr, gr, valid)
    torch.testing.assert_close(out, ref, **FWD_TOL)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(xs.grad, xr.grad, **GRAD_TOL)
    torch.testing.assert_close(gs.grad, gr.grad, **GRAD_TOL)


def test_half_types_accumulate_in_float32():
    x, gate, _ = _inputs((9, 64), torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        out = fremure_ext.freq_gate_blend(x.to(dtype), gate.to(dtype)).float()
        ref = reference.freq_gate_blend(x.to(dtype).float(), gate.to(dtype).float())
        torch.testing.assert_close(out, ref, atol=3e-2, rtol=1e-2)


def test_non_contiguous_inputs():
    x, gate, _ = _inputs((16, 24), torch.float64)
    xt = x.t().contiguous().t()  # same values, column-major
    gate_strided = torch.rand(48, dtype=torch.float64)[::2]
    assert not xt.is_contiguous() and not gate_strided.is_contiguous()
    torch.testing.assert_close(fremure_ext.freq_gate_blend(xt, gate_strided),
                               reference.freq_gate_blend(x, gate_strided))


@pytest.mark.parametrize("per_row", [False, True])
def test_gradcheck_float64(per_row):
    x, gate, valid = _inputs((6, 10), torch.float64, per_row, with_valid=True)
    x.requires_grad_()
    gate.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fremure_ext.freq_gate_blend(a, b, valid), (x, gate))


@pytest.mark.parametrize("with_valid", [False, True])
def test_opcheck(with_valid):
    x, gate, valid = _inputs((5, 12), torch.float64, with_valid=with_valid)
    torch.library.opcheck(torch.ops.fremure.freq_gate_blend.default,
                          (x.requires_grad_(), gate.requires_grad_(), valid))
    torch.library.opcheck(torch.ops.fremure.freq_gate_blend_backward.default,
                          (torch.randn(5, 12, dtype=torch.float64), x.detach(), gate.detach(), valid))


def test_torch_compile_fullgraph():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 16)
            self.gate = torch.nn.Parameter(torch.rand(16))

        def forward(self, x, valid):
            return fremure_ext.freq_gate_blend(self.proj(x), self.gate, valid).sum()

    model = Tiny()
    x, valid = torch.randn(7, 16), torch.rand(7) > 0.5
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, valid), model(x, valid))
    compiled(x, valid).backward()


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(0, 20), dim=st.integers(1, 70), per_row=st.booleans(), with_valid=st.booleans())
def test_fuzz_shapes(rows, dim, per_row, with_valid):
    x, gate, valid = _inputs((rows, dim), torch.float64, per_row, with_valid, seed=rows * 100 + dim)
    torch.testing.assert_close(fremure_ext.freq_gate_blend(x, gate, valid), reference.freq_gate_blend(x, gate, valid))


def test_fixture_gate_then_blend():
    """The published FreqGate (statistics -> MLP -> sigmoid) rebuilt from plain Linear layers
    reproduces the fixture's gates; the op then blends with them as the tail encoder does."""
    fx = load_fixture("freq_gate_d48.pt")
    sd = fx["state_dict"]
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.ReLU(), torch.nn.Linear(64, 48))
    mlp.load_state_dict({k.removeprefix("mlp."): v for k, v in sd.items()})
    for name in ("attention", "spatial", "contact", "raw_counts"):
        f = fx["inputs"][f"freq_{name}"].float()
        pi = (f + 1e-6) / (f.sum() + 1e-6 * f.numel())
        mean = pi.mean()
        stats = torch.stack([mean, pi.min(), pi.max(), pi.std(unbiased=False),
                             -(pi * torch.log(pi + 1e-6)).sum(), torch.log(mean / (pi + 1e-6)).mean()])
        g = torch.sigmoid(mlp(stats))
        torch.testing.assert_close(g, fx["outputs"][name], **FWD_TOL)
        x = torch.randn(4, 3, 48)
        torch.testing.assert_close(fremure_ext.freq_gate_blend(x, g.detach()),
                                   reference.freq_gate_blend(x, g.detach()), **FWD_TOL)


_BAD_INPUTS = [
    ((torch.randn(3, 4, dtype=torch.float64), torch.rand(4)), TypeError, "gate"),
    ((torch.randn(3, 4).int(), torch.rand(4)), TypeError, "x"),
    ((torch.randn(3, 4), torch.rand(5)), ValueError, "gate"),
    ((torch.randn(3, 4), torch.rand(4), torch.ones(2, dtype=torch.bool)), ValueError, "valid"),
    ((torch.randn(3, 4), torch.rand(4), torch.ones(3)), TypeError, "valid"),
    ((torch.tensor(1.0), torch.rand(1)), ValueError, "x"),
]


@pytest.mark.parametrize("args, exc, match", _BAD_INPUTS)
def test_bad_inputs_name_the_argument(args, exc, match):
    with pytest.raises(exc, match=match):
        fremure_ext.freq_gate_blend(*args)


@pytest.mark.parametrize("path", NO_KERNEL_PATHS)
@pytest.mark.parametrize("args, exc, match", _BAD_INPUTS)
def test_bad_inputs_without_the_compiled_kernel(path, args, exc, match):
    with pytest.raises(exc, match=match):
        call_without_kernel(path, fremure_ext.freq_gate_blend, args)


def test_gate_of_the_wrong_shape_rejected_by_kernel():
    with pytest.raises(ValueError, match="gate must have shape"):
        torch.ops.fremure.freq_gate_blend(torch.randn(3, 4), torch.rand(5), None)


def test_shared_gate_gradient_is_bitwise_reproducible_for_any_thread_count():
    """grad_gate of a shared [D] gate sums over rows: the sum must not depend on how the rows were
    split over threads (exact resume of training relies on it)."""
    x, dy = torch.randn(77, 300), torch.randn(77, 300)
    gate = torch.rand(300)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 1, 2):
            torch.set_num_threads(n)
            results.append(torch.ops.fremure.freq_gate_blend_backward(dy, x, gate, None)[1])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert torch.equal(other, results[0])
