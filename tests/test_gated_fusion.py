"""gated_fusion: CPU kernel vs reference, autograd, opcheck, compile, fixture weights, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import fremure_ext
from fremure_ext import reference

from conftest import FWD_TOL, GRAD_TOL, NO_KERNEL_PATHS, call_without_kernel, kernel_only, load_fixture

PUBLISHED = (1.5, 0.02, 0.98)  # temperature, lo, hi


def _inputs(n, d, dc, dtype=torch.float32, per_row=False, with_bias=True, weight_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.randn(n, d, generator=g, dtype=dtype) * 2 + 0.5
    tail = torch.randn(n, d, generator=g, dtype=dtype) * 0.7 - 1
    cond = torch.randn(*((n, dc) if per_row else (dc,)), generator=g, dtype=dtype) * 3
    k = 2 * d + dc
    weight = torch.randn(d, k, generator=g, dtype=dtype) * (weight_scale * k ** -0.5)
    bias = torch.randn(d, generator=g, dtype=dtype) * 0.5 if with_bias else None
    return head, tail, cond, weight, bias


def _leaves(tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def _compare(args, scalars=PUBLISHED, fwd_tol=FWD_TOL, grad_tol=GRAD_TOL):
    ours, ref = _leaves(args), _leaves(args)
    out = fremure_ext.gated_fusion(*ours, *scalars)
    expected = reference.gated_fusion(*ref, *scalars)
    torch.testing.assert_close(out, expected, **fwd_tol)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (expected * w).sum().backward()
    for name, a, b in zip(("head", "tail", "cond", "weight", "bias"), ours, ref):
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad, **grad_tol, msg=lambda m, name=name: f"grad {name}: {m}")
    return out


@pytest.mark.parametrize("n, d, dc", [(0, 8, 3), (1, 8, 3), (13, 17, 5)])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_forward_backward(n, d, dc, per_row, with_bias, dtype):
    _compare(_inputs(n, d, dc, dtype, per_row, with_bias))


@pytest.mark.parametrize("per_row", [False, True])
def test_matches_reference_ag_width(per_row):
    """The model's width (D = 1936, Dc = 64) in float32, at the published tolerances; 40 rows are
    enough for the row loops to split into several parallel chunks."""
    _compare(_inputs(40, 1936, 64, torch.float32, per_row))


@pytest.mark.parametrize("scalars", [(0.3, 0.2, 0.8), (1.0, 0.0, 1.0), (2.0, 0.5, 0.5), (1.5, 0.0, 0.0)])
@pytest.mark.parametrize("per_row", [False, True])
def test_saturated_and_clamped_gates(scalars, per_row):
    """Large logits push many gates past lo/hi: the clamp must zero exactly those gradients."""
    args = _inputs(11, 24, 6, torch.float64, per_row, weight_scale=8.0, seed=3)
    _compare(args, scalars)


def test_backward_without_saved_gate_recomputes_it():
    for per_row in (False, True):
        head, tail, cond, weight, bias = _inputs(9, 20, 4, torch.float64, per_row)
        _, s = torch.ops.fremure.gated_fusion(head, tail, cond, weight, bias, *PUBLISHED)
        dy = torch.randn(9, 20, dtype=torch.float64)
        saved = torch.ops.fremure.gated_fusion_backward(dy, head, tail, cond, weight, bias, s, *PUBLISHED)
        again = torch.ops.fremure.gated_fusion_backward(dy, head, tail, cond, weight, bias, None, *PUBLISHED)
        for a, b in zip(saved, again):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "native"])
def test_every_cpu_kernel_variant(isa, monkeypatch):
    """The row loops are compiled for AVX-512, AVX2 and the baseline ISA; FREMURE_CPU_ISA caps the
    run-time choice, so each variant is checked (on CPUs that have it) against the reference."""
    if isa != "native":
        monkeypatch.setenv("FREMURE_CPU_ISA", isa)
    _compare(_inputs(9, 40, 6, torch.float32, per_row=False, weight_scale=4.0))
    _compare(_inputs(5, 33, 3, torch.float64, per_row=True, with_bias=False))
    # The float sigmoid is a polynomial exp: as accurate as torch.sigmoid over the whole range.
    d = 1001
    logits = torch.linspace(-120.0, 120.0, d)
    weight = torch.zeros(d, 2 * d + 1)
    _, s = torch.ops.fremure.gated_fusion(torch.randn(1, d), torch.randn(1, d), torch.ones(1), weight, logits,
                                          1.3, 0.0, 1.0)
    exact = torch.sigmoid(logits.double() / 1.3)
    torch.testing.assert_close(s[0].double(), exact, atol=1e-7, rtol=3e-7)


def test_gate_sigmoid_output_and_empty_bias_grad():
    head, tail, cond, weight, _ = _inputs(5, 12, 3, torch.float64)
    out, s = torch.ops.fremure.gated_fusion(head, tail, cond, weight, None, 2.0, 0.1, 0.9)
    q = torch.nn.functional.layer_norm(cond, (3,)).expand(5, 3)
    h, t = (torch.nn.functional.layer_norm(x, (12,)) for x in (head, tail))
    expected = torch.sigmoid(torch.cat([h, t, q], -1) @ weight.t() / 2.0)
    torch.testing.assert_close(s, expected)
    grads = torch.ops.fremure.gated_fusion_backward(torch.ones_like(out), head, tail, cond, weight, None, s,
                                                    2.0, 0.1, 0.9)
    assert grads[4].shape == (0,)
    assert [tuple(g.shape) for g in grads[:4]] == [(5, 12), (5, 12), (3,), (12, 27)]


def test_half_types_compute_in_float32():
    args = _inputs(6, 32, 8, torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        low = [None if a is None else a.to(dtype) for a in args]
        ours = _leaves(low)
        out = fremure_ext.gated_fusion(*ours)
        assert out.dtype == dtype
        ref_in = _leaves([None if a is None else a.float() for a in low])
        expected = reference.gated_fusion(*ref_in)
        torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=1e-2)
        out.float().sum().backward()
        expected.sum().backward()
        for a, b in zip(ours, ref_in):
            assert a.grad.dtype == dtype
            torch.testing.assert_close(a.grad.float(), b.grad, atol=5e-2, rtol=5e-2)


def test_non_contiguous_inputs():
    head, tail, cond, weight, bias = _inputs(10, 16, 4, torch.float64, per_row=True)
    head_t = head.t().contiguous().t()
    tail_s = torch.stack([tail, tail], -1)[..., 0]
    cond_t = cond.t().contiguous().t()
    weight_t = weight.t().contiguous().t()
    bias_s = torch.stack([bias, bias], 1)[:, 0]
    args = (head_t, tail_s, cond_t, weight_t, bias_s)
    assert not any(a.is_contiguous() for a in args)
    torch.testing.assert_close(fremure_ext.gated_fusion(*args), reference.gated_fusion(head, tail, cond, weight, bias))
    _compare(args)
    shared = torch.randn(8, dtype=torch.float64)[::2]
    _compare((head, tail, shared, weight, bias))


@pytest.mark.parametrize("per_row, with_bias", [(False, True), (True, False)])
def test_gradcheck_float64(per_row, with_bias):
    args = [a for a in _inputs(4, 5, 3, torch.float64, per_row, with_bias, seed=7) if a is not None]
    for a in args:
        a.requires_grad_()

    def fn(h, t, c, w, b=None):
        return fremure_ext.gated_fusion(h, t, c, w, b, 1.3, 0.1, 0.9)

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("per_row, with_bias", [(False, True), (True, False)])
def test_opcheck(per_row, with_bias):
    head, tail, cond, weight, bias = _inputs(4, 6, 3, torch.float64, per_row, with_bias)
    leaves = _leaves((head, tail, cond, weight, bias))
    torch.library.opcheck(torch.ops.fremure.gated_fusion.default, (*leaves, *PUBLISHED))
    _, s = torch.ops.fremure.gated_fusion(head, tail, cond, weight, bias, *PUBLISHED)
    dy = torch.randn(4, 6, dtype=torch.float64)
    for saved in (s, None):
        torch.library.opcheck(torch.ops.fremure.gated_fusion_backward.default,
                              (dy, head, tail, cond, weight, bias, saved, *PUBLISHED))


class _TinyFusion(torch.nn.Module):
    """The published fusion block: a frequency mapper feeding the gate Linear."""

    def __init__(self, d=16, classes=3):
        super().__init__()
        self.mapper = torch.nn.Linear(classes, 64)
        self.gate = torch.nn.Linear(2 * d + 64, d)

    def forward(self, head, tail, freq):
        return fremure_ext.gated_fusion(head, tail, self.mapper(freq), self.gate.weight, self.gate.bias).sum()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch.manual_seed(0)
    model = _TinyFusion()
    head, tail, freq = torch.randn(7, 16, requires_grad=True), torch.randn(7, 16), torch.rand(3)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(head, tail, freq), model(head, tail, freq))
    compiled(head, tail, freq).backward()
    expected = torch.autograd.grad(model(head, tail, freq), head)[0]
    torch.testing.assert_close(head.grad, expected)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 12), d=st.integers(1, 24), dc=st.integers(1, 9), per_row=st.booleans(),
       with_bias=st.booleans(), temperature=st.floats(0.25, 4.0), lo=st.floats(0.0, 0.5), span=st.floats(0.0, 0.5))
def test_fuzz_shapes(n, d, dc, per_row, with_bias, temperature, lo, span):
    args = _inputs(n, d, dc, torch.float64, per_row, with_bias, weight_scale=3.0, seed=n * 1000 + d * 10 + dc)
    _compare(args, (temperature, lo, lo + span))


def test_fixture_weights_with_published_condition():
    """The fixture's fusion_gate_local and freq_mapper weights, the condition built as the published
    forward builds it (freq_mapper of the relation frequencies), shared over all pairs."""
    fx = load_fixture("transformer_freq_attention.pt")
    sd = fx["state_dict"]
    mapper = torch.nn.Linear(3, 64)
    mapper.load_state_dict({"weight": sd["freq_mapper.attention.weight"], "bias": sd["freq_mapper.attention.bias"]})
    cond = mapper(fx["inputs"]["freq_tensor"].float().unsqueeze(0)).squeeze(0).detach()
    weight, bias = sd["fusion_gate_local.0.weight"], sd["fusion_gate_local.0.bias"]
    assert weight.shape == (48, 2 * 48 + 64)
    g = torch.Generator().manual_seed(1)
    head, tail = torch.randn(11, 48, generator=g), torch.randn(11, 48, generator=g)
    _compare((head, tail, cond, weight, bias))


_x = torch.randn(3, 4)
_c = torch.randn(2)
_w = torch.randn(4, 10)


_BAD_INPUTS = [
    ((_x.double(), _x, _c, _w), {}, TypeError, "tail"),
    ((_x.int(), _x, _c, _w), {}, TypeError, "head"),
    ((_x, _x, _c.double(), _w), {}, TypeError, "cond"),
    ((_x, _x, _c, _w, torch.randn(4).double()), {}, TypeError, "bias"),
    ((_x, _x, _c, _w.to("meta")), {}, ValueError, "weight"),
    ((_x[0], _x[0], _c, _w), {}, ValueError, "head"),
    ((_x, _x[:2], _c, _w), {}, ValueError, "tail"),
    ((_x, _x, torch.randn(2, 2), _w), {}, ValueError, "cond"),
    ((_x, _x, torch.randn(3, 2, 1), _w), {}, ValueError, "cond"),
    ((_x, _x, _c, torch.randn(4, 11)), {}, ValueError, "weight"),
    ((_x, _x, _c, torch.randn(5, 10)), {}, ValueError, "weight"),
    ((_x, _x, _c, _w, torch.randn(3)), {}, ValueError, "bias"),
    ((_x, _x, _c, _w), {"temperature": 0.0}, ValueError, "temperature"),
    ((_x, _x, _c, _w), {"temperature": float("nan")}, ValueError, "temperature"),
    ((_x, _x, _c, _w), {"lo": -0.1}, ValueError, "lo"),
    ((_x, _x, _c, _w), {"lo": 0.6, "hi": 0.5}, ValueError, "lo and hi"),
    ((_x, _x, _c, _w), {"hi": 1.5}, ValueError, "hi"),
    ((_x, _x, _c, _w), {"hi": float("inf")}, ValueError, "hi"),
    ((_x, _x, _c, _w), {"temperature": "1.5"}, TypeError, "temperature"),
]


@pytest.mark.parametrize("args, kwargs, exc, match", _BAD_INPUTS)
def test_bad_inputs_name_the_argument(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fremure_ext.gated_fusion(*args, **kwargs)


@pytest.mark.parametrize("path", NO_KERNEL_PATHS)
@pytest.mark.parametrize("args, kwargs, exc, match", [c for c in _BAD_INPUTS if not kernel_only(c[0], c[1])])
def test_bad_inputs_without_the_compiled_kernel(path, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        call_without_kernel(path, fremure_ext.gated_fusion, args, kwargs)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((_x.double(), _x, _c, _w, None, *PUBLISHED), TypeError, "tail"),
        ((_x, _x, _c, _w.to("meta"), None, *PUBLISHED), ValueError, "weight"),
        ((_x, _x[:2], _c, _w, None, *PUBLISHED), ValueError, "tail"),
        ((_x, _x, torch.randn(2, 2), _w, None, *PUBLISHED), ValueError, "cond"),
        ((_x, _x, _c, torch.randn(4, 11), None, *PUBLISHED), ValueError, "weight"),
        ((_x, _x, _c, _w, torch.randn(5), *PUBLISHED), ValueError, "bias"),
        ((_x, _x, _c, _w, None, -1.0, 0.02, 0.98), ValueError, "temperature"),
        ((_x, _x, _c, _w, None, 1.5, 0.7, 0.3), ValueError, "lo and hi"),
        ((_x, _x, _c, _w, None, 1.5, 0.02, float("nan")), ValueError, "lo and hi"),
        ((_x.int(), _x.int(), _c, _w, None, *PUBLISHED), TypeError, "head"),
    ],
)
def test_bad_inputs_raw_op(args, exc, match):
    with pytest.raises(exc, match=match):
        torch.ops.fremure.gated_fusion(*args)
    with pytest.raises(exc, match=match):
        torch.ops.fremure.gated_fusion_backward(torch.randn(3, 4), *args[:5], None, *args[5:])


def test_bad_backward_only_arguments():
    head, tail, cond, weight, bias = _inputs(3, 4, 2)
    with pytest.raises(ValueError, match="grad_out"):
        torch.ops.fremure.gated_fusion_backward(torch.randn(2, 4), head, tail, cond, weight, bias, None, *PUBLISHED)
    with pytest.raises(ValueError, match="gate_sigmoid"):
        torch.ops.fremure.gated_fusion_backward(torch.randn(3, 4), head, tail, cond, weight, bias,
                                                torch.rand(3, 5), *PUBLISHED)
    with pytest.raises(TypeError, match="gate_sigmoid"):
        torch.ops.fremure.gated_fusion_backward(torch.randn(3, 4), head, tail, cond, weight, bias,
                                                torch.rand(3, 4).double(), *PUBLISHED)


def test_bias_gradient_does_not_depend_on_the_thread_count():
    """The column sums behind grad_bias use a size-determined chunking: bitwise equal for any
    number of threads, and repeatable (exact resume of training relies on it)."""
    args = _inputs(2000, 96, 8)   # 2000 rows of 96: several chunks of 341 rows
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 3, 2):
            torch.set_num_threads(n)
            leaves = _leaves(args)
            fremure_ext.gated_fusion(*leaves).square().sum().backward()
            grads.append(leaves[4].grad)
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        assert torch.equal(other, grads[0])
