"""gated_fusion: the gated fusion of the two local branches (docs/method.md 3.4)."""

from __future__ import annotations

import math

import torch

from .. import reference as _reference
from ..dispatch import compiled
from ._common import check_finite, check_float, check_ndim, check_same

__all__ = ["gated_fusion"]


def gated_fusion(
    head: torch.Tensor,
    tail: torch.Tensor,
    cond: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.5,
    lo: float = 0.02,
    hi: float = 0.98,
) -> torch.Tensor:
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
    check_float(head, "head")
    for t, name in ((tail, "tail"), (cond, "cond"), (weight, "weight")):
        check_float(t, name)
        check_same(head, "head", t, name)
    check_ndim(head, 2, "head", "[N, D]")
    n, d = head.shape
    if d < 1:
        raise ValueError(f"head must have at least one column (D >= 1), got shape {tuple(head.shape)}")
    if tail.shape != head.shape:
        raise ValueError(f"tail must have head's shape {tuple(head.shape)}, got {tuple(tail.shape)}")
    if cond.dim() not in (1, 2) or (cond.dim() == 2 and cond.shape[0] != n) or cond.shape[-1] < 1:
        raise ValueError(f"cond must have shape [Dc] or [{n}, Dc] with Dc >= 1, got {tuple(cond.shape)}")
    dc = cond.shape[-1]
    if weight.shape != (d, 2 * d + dc):
        raise ValueError(f"weight must have shape [D, 2D + Dc] = [{d}, {2 * d + dc}], got {tuple(weight.shape)}")
    if bias is not None:
        check_float(bias, "bias")
        check_same(head, "head", bias, "bias")
        if bias.shape != (d,):
            raise ValueError(f"bias must have shape [D] = [{d}], got {tuple(bias.shape)}")
    _check_scalars(temperature, lo, hi)
    check_finite(cond, "cond")
    if not compiled("gated_fusion", head.device):
        return _reference.gated_fusion(head, tail, cond, weight, bias, temperature, lo, hi)
    out, _ = torch.ops.fremure.gated_fusion(head, tail, cond, weight, bias, float(temperature), float(lo), float(hi))
    return out


def _check_scalars(temperature: float, lo: float, hi: float) -> None:
    for value, name in ((temperature, "temperature"), (lo, "lo"), (hi, "hi")):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"lo and hi must satisfy 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}")


def _check_op_args(op: str, head, others) -> None:
    """The kernels' device/dtype/shape checks, for fake tensors (and mixed meta/CPU calls that the
    dispatcher routes here): a RuntimeError naming the argument, as TORCH_CHECK raises."""
    for t, name in others:
        if t is None:
            continue
        if t.device != head.device:
            raise RuntimeError(f"{op}: {name} must be on the same device as head ({head.device}), got {t.device}")
        if t.dtype != head.dtype:
            raise RuntimeError(f"{op}: {name} must have the dtype of head ({head.dtype}), got {t.dtype}")


@torch.library.register_fake("fremure::gated_fusion")
def _fake(head, tail, cond, weight, bias, temperature, lo, hi):
    _check_op_args("fremure.gated_fusion", head,
                   ((tail, "tail"), (cond, "cond"), (weight, "weight"), (bias, "bias")))
    return head.new_empty(head.shape), head.new_empty(head.shape)


@torch.library.register_fake("fremure::gated_fusion_backward")
def _fake_backward(grad_out, head, tail, cond, weight, bias, gate_sigmoid, temperature, lo, hi):
    _check_op_args("fremure.gated_fusion_backward", head,
                   ((grad_out, "grad_out"), (tail, "tail"), (cond, "cond"), (weight, "weight"), (bias, "bias"),
                    (gate_sigmoid, "gate_sigmoid")))
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
