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

from conftest import FWD_TOL, GRAD_TOL, NO_KERNEL_PATHS, call_without_kernel, kernel_only, load_fixture

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
    with pytest.raises(exc, match=name):
        OP(*args, 0.5)


@pytest.mark.parametrize("path", NO_KERNEL_PATHS)
@pytest.mark.parametrize("name, exc, args", [c for c in _bad_cases() if not kernel_only(c[2])])
def test_bad_inputs_without_the_compiled_kernel(path, name, exc, args):
    with pytest.raises(exc, match=name):
        call_without_kernel(path, fremure_ext.segment_attention, args)


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
    with pytest.raises(ValueError, match=f"segment_offsets must {what}"):
        fremure_ext.segment_attention(q, k, v, off)
    with pytest.raises(ValueError, match=f"segment_offsets must {what}"):
        OP(q, k, v, off, 0.5)
    out, lse = OP(q, k, v, _offsets([2, 3]), 0.5)
    with pytest.raises(ValueError, match=f"segment_offsets must {what}"):
        OP_BWD(out, q, k, v, out, lse, off, 0.5)


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_bad_scale(scale):
    q, k, v, off = _good()
    with pytest.raises(ValueError, match="scale"):
        fremure_ext.segment_attention(q, k, v, off, scale)
    with pytest.raises(ValueError, match="scale"):
        OP(q, k, v, off, scale)
    with pytest.raises(ValueError, match="scale"):
        call_without_kernel("reference", fremure_ext.segment_attention, (q, k, v, off, scale))
    with pytest.raises(TypeError, match="scale"):
        fremure_ext.segment_attention(q, k, v, off, "0.5")


def test_bad_backward_inputs():
    q, k, v, off = _good()
    out, lse = OP(q, k, v, off, 0.5)
    cases = [
        ("grad_out", ValueError, (out[:3], q, k, v, out, lse)),
        ("grad_out", TypeError, (out.double(), q, k, v, out, lse)),
        ("out", ValueError, (out, q, k, v, out[:, :1], lse)),
        ("lse", TypeError, (out, q, k, v, out, lse.double())),
        ("lse", ValueError, (out, q, k, v, out, lse[:, :1])),
        ("lse", ValueError, (out, q, k, v, out, lse.to("meta"))),
    ]
    for name, exc, args in cases:
        with pytest.raises(exc, match=name):
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


# ---- attention dropout (dropout_p, seed)

def _dropout_reference_check(lengths, heads, dh, dtype, p, seed, scale=None):
    offsets = _offsets(lengths)
    q, k, v = _qkv(int(offsets[-1]), heads, dh, dtype, seed=len(lengths) + dh)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out = fremure_ext.segment_attention(qs, ks, vs, offsets, scale, dropout_p=p, seed=seed)
    ref = reference.segment_attention(qr, kr, vr, offsets, scale, dropout_p=p, seed=seed)
    torch.testing.assert_close(out, ref, **FWD_TOL)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for mine, theirs in ((qs.grad, qr.grad), (ks.grad, kr.grad), (vs.grad, vr.grad)):
        torch.testing.assert_close(mine, theirs, **GRAD_TOL)


@pytest.mark.parametrize("layout", ["one_token", "lengths_0_and_1", "frames", "windows", "longer_than_bwd_key_block",
                                    "longer_than_fwd_key_tile"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dropout_matches_reference(layout, dtype):
    _dropout_reference_check(LAYOUTS[layout], 3, 13, dtype, p=0.3, seed=11)


@pytest.mark.parametrize("p, seed", [(0.1, 0), (0.5, -7), (0.9, 2**63 - 1), (0.25, 2**40 + 3)])
def test_dropout_rates_and_seeds_match_reference(p, seed):
    _dropout_reference_check([5, 0, 9, 3], 2, 7, torch.float64, p=p, seed=seed, scale=0.4)


def _one_hot_probe(lengths, heads, p, seed, fn):
    """Uniform attention (q = k = 0) over one-hot values (v[t, h] = e_position): out[t, h, j] is
    keep(t, h, key j of t's segment) / (len * (1 - p)), so `out != 0` is the keep-mask itself."""
    offsets = _offsets(lengths)
    tokens, lmax = int(offsets[-1]), max(lengths)
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(tokens) - offsets[:-1][seg]
    q = torch.zeros(tokens, heads, lmax, dtype=torch.float64)
    v = F.one_hot(pos, lmax).to(torch.float64)[:, None, :].expand(tokens, heads, lmax).contiguous()
    out = fn(q, q.clone(), v, offsets, 1.0, dropout_p=p, seed=seed)
    # the expected mask from the Philox twin: key token of column j is start(t) + j
    key = offsets[:-1][seg][:, None, None] + torch.arange(lmax)[None, None, :]
    expected = reference.dropout_keep_mask(seed, p, torch.arange(tokens)[:, None, None],
                                           torch.arange(heads)[None, :, None], key, heads, tokens)
    valid = (torch.arange(lmax)[None, :] < torch.tensor(lengths)[seg][:, None])[:, None, :].expand_as(out)
    return out, expected & valid, valid


@pytest.mark.parametrize("seed", [3, -1, 2**62 + 5])
def test_dropout_mask_is_bitwise_the_philox_reference(seed):
    lengths, heads, p = [4, 1, 9, 70], 3, 0.4
    for fn in (fremure_ext.segment_attention, reference.segment_attention):
        out, expected, valid = _one_hot_probe(lengths, heads, p, seed, fn)
        assert torch.equal(out != 0, expected)
        length = torch.tensor(lengths, dtype=torch.float64).repeat_interleave(torch.tensor(lengths))
        scaled = out * length[:, None, None] * (1 - p)
        torch.testing.assert_close(scaled[expected], torch.ones_like(scaled[expected]))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_rate_and_seed_dependence(p):
    lengths, heads = [64] * 4, 4  # 65536 (query, head, key) draws
    masks = [_one_hot_probe(lengths, heads, p, s, fremure_ext.segment_attention)[0] != 0 for s in (1, 1, 2)]
    rate = masks[0].double().mean().item()
    assert abs(rate - (1 - p)) < 0.01, rate  # 6 sigma at n = 65536
    assert torch.equal(masks[0], masks[1])
    assert (masks[0] != masks[2]).double().mean().item() > 0.1


def test_dropout_zero_is_the_default_path_bit_for_bit():
    offsets = _offsets([3, 0, 5, 2])
    q, k, v = _qkv(10, 2, 6)
    base = OP(q, k, v, offsets, 0.4)
    for extra in ((0.0,), (0.0, None), (0.0, 12345)):
        again = OP(q, k, v, offsets, 0.4, *extra)
        assert all(torch.equal(a, b) for a, b in zip(base, again))
    g = torch.randn_like(q)
    grads = OP_BWD(g, q, k, v, *base, offsets, 0.4)
    again = OP_BWD(g, q, k, v, *base, offsets, 0.4, 0.0, 99)
    assert all(torch.equal(a, b) for a, b in zip(grads, again))
    assert torch.equal(fremure_ext.segment_attention(q, k, v, offsets, 0.4, dropout_p=0.0, seed=5), base[0])


def test_dropout_keeps_the_undropped_lse():
    offsets = _offsets([3, 5, 2])
    q, k, v = _qkv(10, 2, 6)
    out0, lse0 = OP(q, k, v, offsets, 0.4)
    out1, lse1 = OP(q, k, v, offsets, 0.4, 0.5, 8)
    assert torch.equal(lse0, lse1) and not torch.equal(out0, out1)


@pytest.mark.parametrize("lengths, p", [([3, 0, 1, 4], 0.3), ([6, 2], 0.6)])
def test_dropout_gradcheck_float64(lengths, p):
    offsets = _offsets(lengths)
    q, k, v = (t.requires_grad_() for t in _qkv(int(offsets[-1]), 2, 5, torch.float64, seed=len(lengths)))
    fn = lambda a, b, c: fremure_ext.segment_attention(a, b, c, offsets, 0.7, dropout_p=p, seed=42)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_dropout_opcheck():
    offsets = _offsets([3, 0, 1, 2])
    q, k, v = _qkv(6, 2, 5, torch.float64)
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), offsets, 0.45, 0.35, 77)
    torch.library.opcheck(OP.default, args)
    out, lse = OP(q.detach(), k.detach(), v.detach(), offsets, 0.45, 0.35, 77)
    torch.library.opcheck(OP_BWD.default, (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse,
                                           offsets, 0.45, 0.35, 77))


def test_dropout_half_types_use_the_same_mask():
    offsets = _offsets([4, 7])
    q, k, v = _qkv(11, 2, 8)
    full = fremure_ext.segment_attention(q, k, v, offsets, dropout_p=0.5, seed=9)
    half = fremure_ext.segment_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), offsets, dropout_p=0.5, seed=9)
    ref = reference.segment_attention(*(t.bfloat16().float() for t in (q, k, v)), offsets, dropout_p=0.5, seed=9)
    torch.testing.assert_close(half.float(), ref, atol=2e-2, rtol=2e-2)
    assert torch.equal(half == 0, full == 0)


def test_dropout_seed_drawn_from_the_default_generator():
    offsets = _offsets([5, 6])
    q, k, v = _qkv(11, 2, 4)
    torch.manual_seed(123)
    a = fremure_ext.segment_attention(q, k, v, offsets, dropout_p=0.5)
    b = fremure_ext.segment_attention(q, k, v, offsets, dropout_p=0.5)
    torch.manual_seed(123)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    assert torch.equal(a, fremure_ext.segment_attention(q, k, v, offsets, dropout_p=0.5, seed=seed))
    assert not torch.equal(a, b)


class _DropAttention(_TinyAttention):
    def forward(self, x, offsets, seed):
        q, k, v = self.in_proj(x).view(x.shape[0], 3, self.heads, -1).unbind(1)
        return self.out_proj(fremure_ext.segment_attention(q, k, v, offsets, dropout_p=0.25, seed=seed).flatten(1))


def test_dropout_torch_compile_keeps_the_seed_symbolic():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(0)
    model = _DropAttention()
    x, offsets = torch.randn(9, 12), _offsets([4, 0, 2, 3])
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for seed in (1, 2, 3, 4):
        torch.testing.assert_close(compiled(x, offsets, seed), model(x, offsets, seed), **FWD_TOL)
    assert counter.frame_count <= 2  # the first seed is specialised, the second makes it dynamic
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(xc, offsets, 5).square().sum().backward()
    model(xe, offsets, 5).square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, **GRAD_TOL)


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(dropout_p=1.0, seed=1), ValueError, "dropout_p"),
    (dict(dropout_p=-0.1, seed=1), ValueError, "dropout_p"),
    (dict(dropout_p=float("nan"), seed=1), ValueError, "dropout_p"),
    (dict(dropout_p=True, seed=1), TypeError, "dropout_p"),
    (dict(dropout_p="0.1", seed=1), TypeError, "dropout_p"),
    (dict(dropout_p=0.1, seed="1"), TypeError, "seed"),
    (dict(dropout_p=0.1, seed=1.0), TypeError, "seed"),
    (dict(dropout_p=0.1, seed=2**64), ValueError, "seed"),
])
def test_bad_dropout_arguments(kwargs, exc, name):
    q, k, v, off = _good()
    with pytest.raises(exc, match=name):
        fremure_ext.segment_attention(q, k, v, off, **kwargs)
    for path in NO_KERNEL_PATHS:
        with pytest.raises(exc, match=name):
            call_without_kernel(path, fremure_ext.segment_attention, (q, k, v, off), kwargs)


@pytest.mark.parametrize("p, seed, name", [(1.0, 1, "dropout_p"), (-0.5, 1, "dropout_p"),
                                           (float("nan"), 1, "dropout_p"), (0.2, None, "seed")])
def test_bad_dropout_arguments_of_the_ops(p, seed, name):
    q, k, v, off = _good()
    out, lse = OP(q, k, v, off, 0.5)
    with pytest.raises(ValueError, match=name):
        OP(q, k, v, off, 0.5, p, seed)
    with pytest.raises(ValueError, match=name):
        OP_BWD(out, q, k, v, out, lse, off, 0.5, p, seed)
    with pytest.raises(ValueError, match=name):  # the fake kernels reject the same
        OP(q.to("meta"), k.to("meta"), v.to("meta"), off.to("meta"), 0.5, p, seed)


def test_model_attention_drops_in_training_only():
    """The model's packed attention core drops probabilities with mha.dropout in training, with a
    seed from the default generator, and is the dropout-free op in eval."""
    from fremure.model.layers import segment_core

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(12, 3, dropout=0.3)
    offsets = _offsets([4, 0, 5])
    q, k, v = (torch.randn(9, 12) for _ in range(3))
    shape = (9, 3, 4)
    mha.train()
    torch.manual_seed(5)
    got = segment_core(mha, q, k, v, offsets)
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    want = reference.segment_attention(q.view(shape), k.view(shape), v.view(shape), offsets, 0.5, 0.3, seed)
    torch.testing.assert_close(got, want.reshape(9, 12), **FWD_TOL)
    mha.eval()
    plain = reference.segment_attention(q.view(shape), k.view(shape), v.view(shape), offsets, 0.5)
    torch.testing.assert_close(segment_core(mha, q, k, v, offsets), plain.reshape(9, 12), **FWD_TOL)
