"""Triton gated_fusion kernels (interpreter on CPU, real GPU when present) vs the published-style
formula written with plain torch (LayerNorms, concatenation, Linear, sigmoid, clamp, lerp)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import requires_triton, triton_device

pytestmark = requires_triton


def _published(head, tail, cond, weight, bias, temperature, lo, hi):
    h, t = F.layer_norm(head, head.shape[-1:]), F.layer_norm(tail, tail.shape[-1:])
    q = F.layer_norm(cond, cond.shape[-1:]).expand(head.shape[0], -1)
    gate = torch.clamp(torch.sigmoid(F.linear(torch.cat([h, t, q], -1), weight, bias) / temperature), lo, hi)
    return h + (1 - gate) * (t - h)


@pytest.mark.parametrize("n, d, dc", [(5, 24, 8), (33, 70, 16), (1, 16, 3), (0, 16, 4)])
@pytest.mark.parametrize("per_row_cond", [False, True])
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_backward_match_published_formula(n, d, dc, per_row_cond, with_bias):
    from fremure_ext.triton.gated_fusion import gated_fusion_backward, gated_fusion_forward

    dev = triton_device()
    gen = torch.Generator().manual_seed(n * 7 + d)
    head, tail = (torch.randn(n, d, generator=gen).to(dev).requires_grad_() for _ in range(2))
    cond = torch.randn(*((n, dc) if per_row_cond else (dc,)), generator=gen).to(dev).requires_grad_()
    # Large weights push some gates past the clamp bounds, so the clamp's gradient rule is exercised.
    weight = (torch.randn(d, 2 * d + dc, generator=gen) * 0.6).to(dev).requires_grad_()
    bias = torch.randn(d, generator=gen).to(dev).requires_grad_() if with_bias else None
    args = (1.5, 0.02, 0.98)
    out, sig = gated_fusion_forward(head.detach(), tail.detach(), cond.detach(), weight.detach(),
                                    None if bias is None else bias.detach(), *args)
    ref = _published(head, tail, cond, weight, bias, *args)
    torch.testing.assert_close(out, ref.detach(), atol=1e-5, rtol=1e-4)
    if n == 0:
        return
    grad = torch.randn(n, d, generator=gen).to(dev)
    grads = gated_fusion_backward(grad, head.detach(), tail.detach(), cond.detach(), weight.detach(),
                                  None if bias is None else bias.detach(), sig, *args)
    leaves = [head, tail, cond, weight] + ([bias] if with_bias else [])
    want = torch.autograd.grad((ref * grad).sum(), leaves)
    for got, expected in zip(grads, want):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)
    if not with_bias:
        assert grads[4].numel() == 0
    # Without the saved gate the backward recomputes it and must agree.
    again = gated_fusion_backward(grad, head.detach(), tail.detach(), cond.detach(), weight.detach(),
                                  None if bias is None else bias.detach(), None, *args)
    for a, b in zip(grads, again):
        torch.testing.assert_close(a, b)
