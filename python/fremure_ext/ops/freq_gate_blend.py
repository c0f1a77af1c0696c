"""freq_gate_blend: the frequency gate's blend of a token with its LayerNorm (docs/method.md 3.3)."""

from __future__ import annotations

import torch

from .. import reference as _reference
from ..dispatch import compiled
from ._common import check_float, check_like, check_shape, check_tensor

__all__ = ["freq_gate_blend"]


def freq_gate_blend(x: torch.Tensor, gate: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Blend each row with its affine-free LayerNorm: ``x * (1 - g) + g * LN0(x)``.

    Args:
        x: ``[..., D]`` float tensor (float32/float64; float16/bfloat16 accumulate in float32).
        gate: ``[D]`` (one gate for every row) or the shape of ``x``, same dtype and device;
            values in (0, 1); NaN/inf propagate (:mod:`fremure_ext.finite`).
        valid: optional bool ``[...]`` (x without its last dim); rows where it is False are
            returned unchanged (the reference's padding tokens).

    Returns:
        Tensor with the shape and dtype of ``x``. Differentiable in ``x`` and ``gate``.
    """
    check_float(x, "x")
    check_float(gate, "gate")
    if valid is not None:
        check_tensor(valid, "valid")
    if not compiled("freq_gate_blend", x.device):
        check_freq_gate_blend(x, gate, valid)
        return _reference.freq_gate_blend(x, gate, valid)
    return torch.ops.fremure.freq_gate_blend(x, gate, valid)


def check_freq_gate_blend(x, gate, valid) -> None:
    """What the C++ kernel checks, for the paths without one: the fake kernel and the reference
    fallback (device, dtype and shape; no tensor data read)."""
    check_float(x, "x")
    check_shape(x.dim() >= 1, "x", "[..., D] (at least 1 dimension)", x)
    check_like(x, "x", gate, "gate")
    check_shape(gate.shape == x.shape or (gate.dim() == 1 and gate.shape[0] == x.shape[-1]), "gate",
                f"[{x.shape[-1]}] or the shape of x {tuple(x.shape)}", gate)
    if valid is not None:
        check_like(x, "x", valid, "valid", dtype=False)
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
        check_shape(valid.shape == x.shape[:-1], "valid", f"{tuple(x.shape[:-1])} (x without its last dimension)",
                    valid)


@torch.library.register_fake("fremure::freq_gate_blend")
def _fake(x, gate, valid):
    check_freq_gate_blend(x, gate, valid)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("fremure::freq_gate_blend_backward")
def _fake_backward(grad_out, x, gate, valid):
    check_freq_gate_blend(x, gate, valid)
    check_like(x, "x", grad_out, "grad_out", shape=True)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(gate, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    x, gate, valid = inputs
    ctx.save_for_backward(x, gate, valid)


def _backward(ctx, grad_out):
    x, gate, valid = ctx.saved_tensors
    grad_x, grad_gate = torch.ops.fremure.freq_gate_blend_backward(grad_out.contiguous(), x, gate, valid)
    needs = ctx.needs_input_grad
    return grad_x if needs[0] else None, grad_gate if needs[1] else None, None


torch.library.register_autograd("fremure::freq_gate_blend", _backward, setup_context=_setup_context)
