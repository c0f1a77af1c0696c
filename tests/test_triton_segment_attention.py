"""Triton segment_attention kernels (interpreter on CPU, real GPU when present) vs per-segment softmax
attention written with plain torch."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import requires_triton, triton_device

pytestmark = requires_triton


def _per_segment_attention(q, k, v, offsets, scale):
    outs, lses = [], []
    for s, e in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))
        scores = qs @ ks.transpose(1, 2) * scale
        outs.append((torch.softmax(scores, -1) @ vs).transpose(0, 1))
        lses.append(torch.logsumexp(scores, -1).transpose(0, 1))
    return torch.cat(outs), torch.cat(lses)


@pytest.mark.parametrize(
    "counts, heads, head_dim",
    [([3, 0, 5, 1, 20], 2, 24), ([2, 7], 8, 242), ([17, 33], 1, 16), ([1], 3, 5), ([0, 0], 2, 8)],
)
def test_forward_backward_match_per_segment_softmax(counts, heads, head_dim):
    from fremure_ext.triton.segment_attention import segment_attention_backward, segment_attention_forward

    dev = triton_device()
    offsets = torch.tensor([0] + counts).cumsum(0).to(dev)
    T = int(offsets[-1])
    gen = torch.Generator().manual_seed(T + heads)
    q, k, v = (torch.randn(T, heads, head_dim, generator=gen).to(dev).requires_grad_() for _ in range(3))
    scale = 1 / math.sqrt(head_dim)
    out, lse = segment_attention_forward(q.detach(), k.detach(), v.detach(), offsets, scale)
    if T == 0:
        assert out.shape == (0, heads, head_dim) and lse.shape == (0, heads)
        return
    ref_out, ref_lse = _per_segment_attention(q, k, v, offsets, scale)
    torch.testing.assert_close(out, ref_out.detach(), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse.detach(), atol=2e-6, rtol=1e-5)
    grad = torch.randn(T, heads, head_dim, generator=gen).to(dev)
    grads = segment_attention_backward(grad, q.detach(), k.detach(), v.detach(), out, lse, offsets, scale)
    ref_grads = torch.autograd.grad((ref_out * grad).sum(), [q, k, v])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=5e-6, rtol=1e-5)


def test_non_contiguous_inputs_are_handled():
    from fremure_ext.triton.segment_attention import segment_attention_forward

    dev = triton_device()
    offsets = torch.tensor([0, 4, 9], device=dev)
    qkv = torch.randn(9, 3, 2, 16, device=dev)  # e.g. a fused in-projection viewed per head
    q, k, v = qkv.unbind(1)
    assert not q.is_contiguous()
    out, _ = segment_attention_forward(q, k, v, offsets, 0.25)
    ref, _ = _per_segment_attention(q, k, v, offsets, 0.25)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


# ---- attention dropout: the same Philox keep-mask as the CPU kernel and the reference

@pytest.mark.parametrize(
    "counts, heads, head_dim, p, seed",
    [([3, 0, 5, 1, 20], 2, 24, 0.3, 7), ([2, 7], 8, 242, 0.1, -3), ([17, 33], 1, 16, 0.6, 2**40 + 1)],
)
def test_dropout_forward_backward_match_reference(counts, heads, head_dim, p, seed):
    from fremure_ext import reference
    from fremure_ext.triton.segment_attention import segment_attention_backward, segment_attention_forward

    dev = triton_device()
    offsets = torch.tensor([0] + counts).cumsum(0)
    T = int(offsets[-1])
    gen = torch.Generator().manual_seed(T + heads)
    q, k, v = (torch.randn(T, heads, head_dim, generator=gen).requires_grad_() for _ in range(3))
    scale = 1 / math.sqrt(head_dim)
    args = [t.detach().to(dev) for t in (q, k, v)]
    out, lse = segment_attention_forward(*args, offsets.to(dev), scale, p, seed)
    ref = reference.segment_attention(q, k, v, offsets, scale, dropout_p=p, seed=seed)
    torch.testing.assert_close(out.cpu(), ref.detach(), atol=2e-6, rtol=1e-5)
    plain_lse = reference.segment_attention_lse(q.detach(), k.detach(), offsets, scale)
    torch.testing.assert_close(lse.cpu(), plain_lse, atol=2e-6, rtol=1e-5)
    grad = torch.randn(T, heads, head_dim, generator=gen)
    grads = segment_attention_backward(grad.to(dev), *args, out, lse, offsets.to(dev), scale, p, seed)
    ref_grads = torch.autograd.grad((ref * grad).sum(), [q, k, v])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.cpu(), want, atol=5e-6, rtol=1e-5)


def test_dropout_mask_is_bitwise_the_cpu_kernels():
    """Uniform attention over one-hot values exposes the keep-mask (out != 0) of each kernel."""
    import fremure_ext
    from fremure_ext.triton.segment_attention import segment_attention_forward

    dev = triton_device()
    lengths, heads, p, seed = [5, 1, 19], 3, 0.45, 2**63 - 5
    offsets = torch.tensor([0] + lengths).cumsum(0)
    T = int(offsets[-1])
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(T) - offsets[:-1][seg]
    q = torch.zeros(T, heads, 32)
    v = torch.nn.functional.one_hot(pos, 32).float()[:, None, :].expand(T, heads, 32).contiguous()
    cpu = fremure_ext.segment_attention(q, q, v, offsets, 1.0, dropout_p=p, seed=seed)
    out, _ = segment_attention_forward(q.to(dev), q.to(dev), v.to(dev), offsets.to(dev), 1.0, p, seed)
    assert torch.equal(out.cpu() != 0, cpu != 0)
    assert 0 < int((cpu != 0).sum()) < sum(n * n for n in lengths) * heads  # some kept, some dropped


def test_philox_rand_matches_the_reference_uniform():
    from fremure_ext.reference.philox import philox_uniform
    from fremure_ext.triton.philox import philox_rand

    offset = torch.cat([torch.arange(300), torch.tensor([2**32 - 1, 2**32, 2**41 + 9])])
    for seed in (0, 1, -1, 2**31, 2**63 - 1):
        assert torch.equal(philox_rand(seed, offset.to(triton_device())).cpu(), philox_uniform(seed, offset))
