"""gated_fusion: the gated fusion of the two local branches (docs/method.md 3.4)."""

from __future__ import annotations

import math

import torch

from .. import reference as _reference
from ..dispatch import compiled
from ._common import check_float, check_like, check_number, check_shape

__all__ = ["gated_fusion"]


def gated_fusion(head: torch.Tensor, tail: torch.Tensor, cond: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None, temperature: float = 1.5, lo: float = 0.02,
                 hi: float = 0.98) -> torch.Tensor:
    """Fuse two branches with a clamped, tempered sigmoid gate conditioned on both and on ``cond``.

    With ``h, t, q = LN0(head), LN0(tail), LN0(cond)`` (LayerNorm without affine, eps 1e-5)::

        gate = clamp(sigmoid((h W_h^T + t W_t^T + q W_q^T + bias) / temperature), lo, hi)
        out  = h + (1 - gate) * (t - h)

    where ``[W_h | W_t | W_q]`` are the column blocks of ``weight``. The concatenation
    ``[h | t | q]`` is never built; a shared ``[Dc]`` condition costs one matrix-vector product.

    Args:
        head, tail: ``[N, D]`` float tensors (float32/float64; float16/bfloat16 are computed in
            float32 and rounded back).
        cond: ``[Dc]`` (one condition for every row, e.g. the frequency mapper's output) or ``[N, Dc]``.
        weight: ``[D, 2D + Dc]``, the ``nn.Linear(2D + Dc, D).weight`` layout (columns head | tail | cond).
        bias: ``[D]`` or None.
        temperature: > 0 (the published model uses 1.5).
        lo, hi: gate clamp bounds, ``0 <= lo <= hi <= 1`` (published: 0.02, 0.98).

    Returns:
        ``[N, D]`` tensor of head's dtype. Differentiable in head, tail, cond, weight and bias
        (torch.clamp's rule: the gradient passes where ``lo <= sigmoid <= hi``).

    The raw op ``torch.ops.fremure.gated_fusion`` returns ``(out, gate_sigmoid)``, the second being
    ``sigmoid(logits / temperature)`` before clamping: autograd keeps it (one ``[N, D]`` tensor) so
    the backward needs no second forward GEMM; LayerNorm statistics are recomputed instead.
    """
    for t, name in ((head, "head"), (tail, "tail"), (cond, "cond"), (weight, "weight"), (bias, "bias")):
        if t is not None:
            check_float(t, name)
    for value, name in ((temperature, "temperature"), (lo, "lo"), (hi, "hi")):
        check_number(value, name)
    args = (head, tail, cond, weight, bias, float(temperature), float(lo), float(hi))
    if not compiled("gated_fusion", head.device):
        check_gated_fusion(*args)
        return _reference.gated_fusion(*args)
    return torch.ops.fremure.gated_fusion(*args)[0]


def check_gated_fusion(head, tail, cond, weight, bias, temperature, lo, hi) -> None:
    """What the C++ kernel checks, for the paths without one: the fake kernel, the Triton launcher
    and the reference fallback (device, dtype, shape and argument values; no tensor data read)."""
    check_float(head, "head")
    check_shape(head.dim() == 2 and head.shape[1] >= 1, "head", "[N, D] with D >= 1", head)
    n, d = head.shape
    check_like(head, "head", tail, "tail", shape=True)
    check_like(head, "head", cond, "cond")
    check_shape(cond.dim() in (1, 2) and cond.shape[-1] >= 1 and (cond.dim() == 1 or cond.shape[0] == n), "cond",
                f"[Dc] or [{n}, Dc] with Dc >= 1", cond)
    dc = cond.shape[-1]
    check_like(head, "head", weight, "weight")
    check_shape(weight.shape == (d, 2 * d + dc), "weight", f"[D, 2D + Dc] = [{d}, {2 * d + dc}]", weight)
    check_like(head, "head", bias, "bias")
    check_shape(bias is None or bias.shape == (d,), "bias", f"[D] = [{d}]", bias)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi <= 1):
        raise ValueError(f"lo and hi must satisfy 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}")


def check_gated_fusion_backward(grad_out, head, tail, cond, weight, bias, gate_sigmoid, temperature, lo, hi) -> None:
    check_gated_fusion(head, tail, cond, weight, bias, temperature, lo, hi)
    check_like(head, "head", grad_out, "grad_out", shape=True)
    check_like(head, "head", gate_sigmoid, "gate_sigmoid", shape=True)


@torch.library.register_fake("fremure::gated_fusion")
def _fake(head, tail, cond, weight, bias, temperature, lo, hi):
    check_gated_fusion(head, tail, cond, weight, bias, temperature, lo, hi)
    return head.new_empty(head.shape), head.new_empty(head.shape)


@torch.library.register_fake("fremure::gated_fusion_backward")
def _fake_backward(grad_out, head, tail, cond, weight, bias, gate_sigmoid, temperature, lo, hi):
    check_gated_fusion_backward(grad_out, head, tail, cond, weight, bias, gate_sigmoid, temperature, lo, hi)
    grad_bias = head.new_empty(bias.shape if bias is not None else (0,))
    return (head.new_empty(head.shape), head.new_empty(head.shape), cond.new_empty(cond.shape),
            weight.new_empty(weight.shape), grad_bias)


def _setup_context(ctx, inputs, output):
    head, tail, cond, weight, bias, temperature, lo, hi = inputs
    _, gate_sigmoid = output
    ctx.mark_non_differentiable(gate_sigmoid)
    ctx.save_for_backward(head, tail, cond, weight, bias, gate_sigmoid)
    ctx.scalars = (temperature, lo, hi)


def _backward(ctx, grad_out, _grad_gate_sigmoid):
    head, tail, cond, weight, bias, gate_sigmoid = ctx.saved_tensors
    grads = torch.ops.fremure.gated_fusion_backward(grad_out.contiguous(), head, tail, cond, weight, bias,
                                                    gate_sigmoid, *ctx.scalars)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:5])), None, None, None)


torch.library.register_autograd("fremure::gated_fusion", _backward, setup_context=_setup_context)
