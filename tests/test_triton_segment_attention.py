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
