"""segment_attention: CPU kernel vs the padded reference and vs nn.MultiheadAttention, autograd,
opcheck, compile, fuzzing, bad input."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import fremure_ext
from fremure_ext import reference

from conftest import FWD_TOL, GRAD_TOL, load_fixture

OP = torch.ops.fremure.segment_attention
OP_BWD = torch.ops.fremure.segment_attention_backward


def _offsets(lengths) -> torch.Tensor:
    return torch.tensor([0, *lengths], dtype=torch.long).cumsum(0)


def _qkv(tokens, heads, dh, dtype=torch.float32, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(tokens, heads, dh, generator=g, dtype=dtype) * spread for _ in range(3)]


def _check_against_reference(lengths, heads, dh, dtype, scale=None, seed=0, spread=1.0):
    offsets = _offsets(lengths)
    q, k, v = _qkv(int(offsets[-1]), heads, dh, dtype, seed, spread)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out = fremure_ext.segment_attention(qs, ks, vs, offsets, scale)
    ref = reference.segment_attention(qr, kr, vr, offsets, scale)
    torch.testing.assert_close(out, ref, **FWD_TOL)
    _, lse = OP(q, k, v, offsets, scale if scale is not None else dh ** -0.5)
    torch.testing.assert_close(lse, reference.segment_attention_lse(q, k, offsets, scale), **FWD_TOL)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for mine, theirs in ((qs.grad, qr.grad), (ks.grad, kr.grad), (vs.grad, vr.grad)):
        torch.testing.assert_close(mine, theirs, **GRAD_TOL)


LAYOUTS = {
    "no_tokens": [],
    "no_segments_but_empty": [0, 0],
    "one_token": [1],
    "one_segment": [7],
    "lengths_0_and_1": [0, 1, 0, 1, 1, 0],
    "frames": [3, 0, 2, 2, 1, 3],
    "windows": [5, 4, 12, 9, 2],
    "longer_than_bwd_key_block": [17, 3],
    "longer_than_fwd_key_tile": [70, 1, 66],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("heads, dh", [(1, 1), (3, 13), (2, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_forward_backward(layout, heads, dh, dtype):
    _check_against_reference(LAYOUTS[layout], heads, dh, dtype)


def test_action_genome_heads():
    """D = 1936 split as H = 8 heads of Dh = 242 (not a power of two), frame and window layouts."""
    _check_against_reference([3, 1, 6, 2, 4, 5, 1], 8, 242, torch.float32)
    _check_against_reference([4, 7, 8, 6, 12, 9], 8, 242, torch.float32, seed=1)


def test_many_segments_and_custom_scale():
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(0, 7, (150,), generator=g).tolist()
    _check_against_reference(lengths, 4, 24, torch.float32, scale=0.37)


def test_large_scores_stay_finite():
    """Scores of a few hundred: the running max keeps exp() in range (online softmax)."""
    _check_against_reference([5, 70, 3], 2, 16, torch.float64, scale=1.0, spread=6.0)


def test_segment_of_one_token_returns_its_value():
    q, k, v = _qkv(4, 2, 5)
    offsets = _offsets([1, 2, 1])
    out, lse = OP(q, k, v, offsets, 0.5)
    torch.testing.assert_close(out[0], v[0])
    torch.testing.assert_close(out[3], v[3])
    torch.testing.assert_close(lse[0], 0.5 * (q[0] * k[0]).sum(-1))


def test_segments_are_isolated():
    """Changing the tokens of one segment changes nothing in the others."""
    offsets = _offsets([3, 4, 2])
    q, k, v = _qkv(9, 2, 6)
    base = fremure_ext.segment_attention(q, k, v, offsets)
    k2, v2 = k.clone(), v.clone()
    k2[3:7] += 5.0
    v2[3:7] -= 2.0
    moved = fremure_ext.segment_attention(q, k2, v2, offsets)
    torch.testing.assert_close(moved[:3], base[:3], rtol=0, atol=0)
    torch.testing.assert_close(moved[7:], base[7:], rtol=0, atol=0)
    assert not torch.allclose(moved[3:7], base[3:7])


def test_int32_offsets_and_lse_dtype():
    q, k, v = _qkv(6, 2, 4, torch.float64)
    out64, lse64 = OP(q, k, v, _offsets([2, 4]), 0.5)
    out32, lse32 = OP(q, k, v, _offsets([2, 4]).int(), 0.5)
    torch.testing.assert_close(out32, out64)
    assert lse64.dtype == torch.float64 and lse64.shape == (6, 2)
    _, lse_half = OP(q.half(), k.half(), v.half(), _offsets([2, 4]), 0.5)
    assert lse_half.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types_accumulate_in_float32(dtype):
    offsets = _offsets([3, 0, 5, 1])
    q, k, v = (t.to(dtype) for t in _qkv(9, 2, 40))
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out = fremure_ext.segment_attention(qs, ks, vs, offsets)
    assert out.dtype == dtype
    qr, kr, vr = (t.float().requires_grad_() for t in (q, k, v))
    ref = reference.segment_attention(qr, kr, vr, offsets)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)
    w = torch.randn(out.shape)
    (out.float() * w).sum().backward()
    (ref * w).sum().backward()
    for mine, theirs in ((qs.grad, qr.grad), (ks.grad, kr.grad), (vs.grad, vr.grad)):
        assert mine.dtype == dtype
        torch.testing.assert_close(mine.float(), theirs, atol=5e-2, rtol=2e-2)


def test_non_contiguous_inputs():
    """Slices of a fused qkv projection (read in place) and a transposed head dim (copied)."""
    offsets = _offsets([2, 5, 1])
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(8, 3, 4, 6, generator=g, dtype=torch.float64)
    q, k, v = qkv.unbind(1)
    assert not q.is_contiguous() and q.stride(-1) == 1
    vt = torch.randn(8, 4, 6, generator=g, dtype=torch.float64).transpose(1, 2).contiguous().transpose(1, 2)
    assert vt.stride(-1) != 1
    for vv in (v, vt):
        qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, vv))
        out = fremure_ext.segment_attention(q, k, vv, offsets)
        ref = reference.segment_attention(q.contiguous(), k.contiguous(), vv.contiguous(), offsets)
        torch.testing.assert_close(out, ref)
        # backward with a non-contiguous (expanded) grad_out, as from .sum()
        fremure_ext.segment_attention(qs, ks, vs, offsets).sum().backward()
        qr, kr, vr = (t.detach().contiguous().requires_grad_() for t in (q, k, vv))
        reference.segment_attention(qr, kr, vr, offsets).sum().backward()
        torch.testing.assert_close(qs.grad, qr.grad)
        torch.testing.assert_close(ks.grad, kr.grad)
        torch.testing.assert_close(vs.grad, vr.grad)


@pytest.mark.parametrize("lengths", [[3, 0, 1, 4], [1], [6, 2]])
def test_gradcheck_float64(lengths):
    offsets = _offsets(lengths)
    q, k, v = (t.requires_grad_() for t in _qkv(int(offsets[-1]), 2, 5, torch.float64, seed=len(lengths)))
    assert torch.autograd.gradcheck(lambda a, b, c: fremure_ext.segment_attention(a, b, c, offsets, 0.7), (q, k, v))


def test_lse_is_not_differentiable():
    q, k, v = (t.requires_grad_() for t in _qkv(5, 2, 3))
    out, lse = OP(q, k, v, _offsets([2, 3]), 0.5)
    assert out.requires_grad and not lse.requires_grad


def test_only_some_inputs_need_grad():
    offsets = _offsets([2, 3])
    q, k, v = _qkv(5, 2, 3, torch.float64)
    v.requires_grad_()
    fremure_ext.segment_attention(q, k, v, offsets).sum().backward()
    vr = v.detach().clone().requires_grad_()
    reference.segment_attention(q, k, vr, offsets).sum().backward()
    torch.testing.assert_close(v.grad, vr.grad)


def test_opcheck():
    offsets = _offsets([3, 0, 1, 2])
    q, k, v = _qkv(6, 2, 5, torch.float64)
    torch.library.opcheck(OP.default, (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), offsets, 0.45))
    out, lse = OP(q.detach(), k.detach(), v.detach(), offsets, 0.45)
    torch.library.opcheck(OP_BWD.default, (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse,
                                           offsets, 0.45))


class _TinyAttention(torch.nn.Module):
    """In-projection, segment attention, out-projection: the published attention without padding."""

    def __init__(self, dim=12, heads=3):
        super().__init__()
        self.heads = heads
        self.in_proj = torch.nn.Linear(dim, 3 * dim)
        self.out_proj = torch.nn.Linear(dim, dim)

    def forward(self, x, offsets):
        q, k, v = self.in_proj(x).view(x.shape[0], 3, self.heads, -1).unbind(1)
        return self.out_proj(fremure_ext.segment_attention(q, k, v, offsets).flatten(1))


_INDUCTOR = pytest.param("inductor", marks=pytest.mark.skipif(
    os.environ.get("FREMURE_TEST_INDUCTOR") != "1",
    reason="inductor's cold C++ compile takes 30-40 s on this 2-core machine; set FREMURE_TEST_INDUCTOR=1"))


@pytest.mark.parametrize("backend", ["aot_eager", _INDUCTOR])
def test_torch_compile_fullgraph(backend):
    torch.manual_seed(0)
    model = _TinyAttention()
    x, offsets = torch.randn(9, 12), _offsets([4, 0, 2, 3])
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(x, offsets), model(x, offsets), **FWD_TOL)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(xc, offsets).square().sum().backward()
    model(xe, offsets).square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, **GRAD_TOL)


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=0, max_size=8), heads=st.integers(1, 3),
       dh=st.integers(1, 20), scale=st.one_of(st.none(), st.floats(0.05, 2.0)))
def test_fuzz_shapes(lengths, heads, dh, scale):
    _check_against_reference(lengths, heads, dh, torch.float64, scale=scale, seed=sum(lengths) + dh)


# ---- the op replaces the published nn.MultiheadAttention with key_padding_mask


def _mha_padded(mha, xq, xk, xv, offsets):
    """The published layout: [Lmax, S, E] zero-padded, key_padding_mask True on padding."""
    from fremure_ext.reference.segment_attention import pad_segments, unpad_segments

    qp, mask, index = pad_segments(xq, offsets)
    kp, _, _ = pad_segments(xk, offsets)
    vp, _, _ = pad_segments(xv, offsets)
    out, _ = mha(qp.transpose(0, 1), kp.transpose(0, 1), vp.transpose(0, 1), key_padding_mask=mask)
    return unpad_segments(out.transpose(0, 1), index)


def _mha_packed(mha, xq, xk, xv, offsets):
    """The same attention with the projections outside and segment_attention in between."""
    heads, embed = mha.num_heads, mha.embed_dim
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    q = F.linear(xq, wq, bq).view(-1, heads, embed // heads)
    k = F.linear(xk, wk, bk).view(-1, heads, embed // heads)
    v = F.linear(xv, wv, bv).view(-1, heads, embed // heads)
    return mha.out_proj(fremure_ext.segment_attention(q, k, v, offsets).flatten(1))


@pytest.mark.parametrize("heads, embed", [(4, 48), (8, 8 * 21)])
@pytest.mark.parametrize("decoder_style", [False, True])
def test_equals_multihead_attention_with_key_padding_mask(heads, embed, decoder_style):
    torch.manual_seed(heads)
    mha = torch.nn.MultiheadAttention(embed, heads, dropout=0.0)
    offsets = _offsets([3, 1, 6, 2, 5])
    x = torch.randn(int(offsets[-1]), embed)
    pos = torch.randn_like(x) if decoder_style else torch.zeros_like(x)

    def run(fn):
        mha.zero_grad()
        xx = x.clone().requires_grad_()
        out = fn(mha, xx + pos, xx + pos, xx, offsets)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = [xx.grad] + [p.grad.clone() for p in mha.parameters()]
        return out.detach(), grads

    ref_out, ref_grads = run(_mha_padded)
    out, grads = run(_mha_packed)
    torch.testing.assert_close(out, ref_out, **FWD_TOL)
    for mine, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(mine, theirs, **GRAD_TOL)


def test_equals_functional_multi_head_attention_forward():
    torch.manual_seed(1)
    heads, embed = 2, 10
    mha = torch.nn.MultiheadAttention(embed, heads)
    offsets = _offsets([2, 4, 1])
    x = torch.randn(7, embed)
    from fremure_ext.reference.segment_attention import pad_segments, unpad_segments

    xp, mask, index = pad_segments(x, offsets)
    xp = xp.transpose(0, 1)
    ref, _ = F.multi_head_attention_forward(
        xp, xp, xp, embed, heads, mha.in_proj_weight, mha.in_proj_bias, None, None, False, 0.0,
        mha.out_proj.weight, mha.out_proj.bias, training=False, key_padding_mask=mask, need_weights=False)
    torch.testing.assert_close(_mha_packed(mha, x, x, x, offsets), unpad_segments(ref.transpose(0, 1), index),
                               **FWD_TOL)


def test_fixture_frames_with_published_attention_weights():
    """Layer 0 of the published local encoder, on the fixture's features and frame layout (with an
    empty frame): nn.MultiheadAttention over padded frames == projections + segment_attention."""
    fx = load_fixture("transformer_freq_contact_emptyframe.pt")
    cfg, sd = fx["config"], fx["state_dict"]
    mha = torch.nn.MultiheadAttention(cfg["embed_dim"], cfg["nhead"], dropout=0.0)
    prefix = "local_attention.layers.0.self_attn."
    mha.load_state_dict({k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)})
    offsets = _offsets(cfg["counts"])
    x = fx["inputs"]["features"]
    assert (fx["inputs"]["im_idx"].diff() >= 0).all() and x.shape[0] == int(offsets[-1])
    with torch.no_grad():
        torch.testing.assert_close(_mha_packed(mha, x, x, x, offsets), _mha_padded(mha, x, x, x, offsets), **FWD_TOL)


# ---- bad inputs


def _good(tokens=5):
    q, k, v = _qkv(tokens, 2, 3)
    return q, k, v, _offsets([2, tokens - 2])


def _bad_cases():
    q, k, v, off = _good()
    return [
        ("q", TypeError, (q.int(), k, v, off)),
        ("k", TypeError, (q, k.double(), v, off)),
        ("v", ValueError, (q, k, v[:, :1], off)),
        ("k", ValueError, (q, k.to("meta"), v, off)),
        ("q", ValueError, (q[0], k[0], v[0], off)),
        ("q", ValueError, (q[:, :0], k[:, :0], v[:, :0], off)),
        ("segment_offsets", TypeError, (q, k, v, off.float())),
        ("segment_offsets", ValueError, (q, k, v, off.view(1, -1))),
        ("segment_offsets", ValueError, (q, k, v, off[:0])),
        ("segment_offsets", ValueError, (q, k, v, off.to("meta"))),
    ]


@pytest.mark.parametrize("name, exc, args", _bad_cases())
def test_bad_inputs_name_the_argument(name, exc, args):
    with pytest.raises(exc, match=name):
        fremure_ext.segment_attention(*args)
    with pytest.raises(RuntimeError, match=name):
        OP(*args, 0.5)


@pytest.mark.parametrize("offsets, what", [
    ([1, 2, 5], "start at 0"),
    ([0, 3, 2, 5], "be nondecreasing"),
    ([0, 2, 4], "end at the number of tokens"),
    ([0, 2, 7], "end at the number of tokens"),
    ([0, -1, 5], "be nondecreasing"),
])
def test_bad_offset_values(offsets, what):
    q, k, v, _ = _good()
    off = torch.tensor(offsets)
    with pytest.raises(RuntimeError, match=f"segment_offsets must {what}"):
        fremure_ext.segment_attention(q, k, v, off)
    with pytest.raises(RuntimeError, match=f"segment_offsets must {what}"):
        OP(q, k, v, off, 0.5)
    out, lse = OP(q, k, v, _offsets([2, 3]), 0.5)
    with pytest.raises(RuntimeError, match=f"segment_offsets must {what}"):
        OP_BWD(out, q, k, v, out, lse, off, 0.5)


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_bad_scale(scale):
    q, k, v, off = _good()
    with pytest.raises(ValueError, match="scale"):
        fremure_ext.segment_attention(q, k, v, off, scale)
    with pytest.raises(RuntimeError, match="scale"):
        OP(q, k, v, off, scale)
    with pytest.raises(TypeError, match="scale"):
        fremure_ext.segment_attention(q, k, v, off, "0.5")


def test_bad_backward_inputs():
    q, k, v, off = _good()
    out, lse = OP(q, k, v, off, 0.5)
    cases = [
        ("grad_out", (out[:3], q, k, v, out, lse)),
        ("grad_out", (out.double(), q, k, v, out, lse)),
        ("out", (out, q, k, v, out[:, :1], lse)),
        ("lse", (out, q, k, v, out, lse.double())),
        ("lse", (out, q, k, v, out, lse[:, :1])),
        ("lse", (out, q, k, v, out, lse.to("meta"))),
    ]
    for name, args in cases:
        with pytest.raises(RuntimeError, match=name):
            OP_BWD(*args, off, 0.5)


def test_nan_stays_in_its_segment():
    """A NaN token poisons only its own segment, as in the padded reference."""
    q, k, v = _qkv(7, 2, 4)
    offsets = _offsets([3, 4])
    k[4, 1, 2] = float("nan")
    out = fremure_ext.segment_attention(q, k, v, offsets)
    ref = reference.segment_attention(q, k, v, offsets)
    assert torch.isfinite(out[:3]).all() and torch.isnan(out[3:, 1]).all()
    torch.testing.assert_close(out, ref, equal_nan=True)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v, off = _good()
    torch.testing.assert_close(fremure_ext.segment_attention(q, k, v, off), OP(q, k, v, off, 1 / math.sqrt(3))[0])
