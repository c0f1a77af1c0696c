"""segment_attention: multi-head softmax attention restricted to contiguous segments of a packed
token array (the pairs of one frame, or of one temporal window), with no padding computed."""

from __future__ import annotations

import math

import torch

from ._common import check_float, check_ndim, check_same, check_tensor

__all__ = ["segment_attention"]

_INDEX_DTYPES = (torch.int64, torch.int32)


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_offsets: torch.Tensor,
                      scale: float | None = None) -> torch.Tensor:
    """Softmax attention of every token over the tokens of its own segment.

    ``out[i, h] = sum_j softmax_j(scale * q[i, h] . k[j, h]) v[j, h]`` with ``j`` running over the
    segment that holds token ``i``. It is what ``nn.MultiheadAttention`` computes between its input
    and output projections on a zero-padded batch of segments with a key padding mask, minus the
    padding: project q, k, v with ordinary Linear layers outside the op.

    Args:
        q, k, v: ``[T, H, Dh]`` float tensors (float32/float64; float16/bfloat16 compute in
            float32), same shape, dtype and device; any H >= 1 and Dh >= 1. Views with a unit
            stride in the last dimension (e.g. slices of a fused qkv projection) are read in place.
        segment_offsets: ``[S + 1]`` int64 (or int32) CSR boundaries: ``offsets[0] == 0``,
            nondecreasing, ``offsets[-1] == T``; empty segments are allowed. Values are checked by
            the kernel (RuntimeError naming ``segment_offsets``).
        scale: score scale, default ``1 / sqrt(Dh)``.

    Returns:
        ``[T, H, Dh]`` tensor of q's dtype, differentiable in q, k and v. The per-query
        log-sum-exp that backward uses is the op's second output
        (``torch.ops.fremure.segment_attention``), not returned here.
    """
    _check_inputs(q, k, v, segment_offsets)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return torch.ops.fremure.segment_attention(q, k, v, segment_offsets, float(scale))[0]


def _check_inputs(q, k, v, segment_offsets) -> None:
    """Metadata checks (no data read): TypeError for a wrong type or dtype, ValueError else."""
    check_float(q, "q")
    check_float(k, "k")
    check_float(v, "v")
    check_same(q, "q", k, "k")
    check_same(q, "q", v, "v")
    check_ndim(q, 3, "q", "[T, H, Dh]")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape != q.shape:
        raise ValueError(f"v must have the shape of q {tuple(q.shape)}, got {tuple(v.shape)}")
    if q.shape[1] < 1 or q.shape[2] < 1:
        raise ValueError(f"q must have H >= 1 heads and a head dimension Dh >= 1, got shape {tuple(q.shape)}")
    check_tensor(segment_offsets, "segment_offsets")
    check_same(q, "q", segment_offsets, "segment_offsets", dtype=False)
    if segment_offsets.dtype not in _INDEX_DTYPES:
        raise TypeError(f"segment_offsets must be an int64 (or int32) tensor, got {segment_offsets.dtype}")
    if segment_offsets.dim() != 1 or segment_offsets.shape[0] < 1:
        raise ValueError(f"segment_offsets must be a 1-D tensor [S + 1] with at least one element, "
                         f"got shape {tuple(segment_offsets.shape)}")


def _check_fake(op: str, check, *args) -> None:
    """Runs a metadata check inside a fake kernel; the error is a RuntimeError as from the C++ kernel.

    The fake kernel is also what runs when the inputs mix a real device with "meta", so it must
    reject what the real kernel rejects instead of returning uninitialised memory.
    """
    try:
        check(*args)
    except (TypeError, ValueError) as err:
        raise RuntimeError(f"fremure.{op}: {err}") from err


def _check_backward_inputs(grad_out, q, k, v, out, lse, segment_offsets) -> None:
    _check_inputs(q, k, v, segment_offsets)
    for name, t in (("grad_out", grad_out), ("out", out)):
        check_float(t, name)
        check_same(q, "q", t, name)
        if t.shape != q.shape:
            raise ValueError(f"{name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
    check_tensor(lse, "lse")
    check_same(q, "q", lse, "lse", dtype=False)
    if lse.dtype != _lse_dtype(q.dtype):
        raise TypeError(f"lse must have dtype {_lse_dtype(q.dtype)} for {q.dtype} inputs, got {lse.dtype}")
    if lse.shape != q.shape[:2]:
        raise ValueError(f"lse must have shape {tuple(q.shape[:2])}, got {tuple(lse.shape)}")


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.library.register_fake("fremure::segment_attention")
def _fake(q, k, v, segment_offsets, scale):
    _check_fake("segment_attention", _check_inputs, q, k, v, segment_offsets)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(q.shape[:2], dtype=_lse_dtype(q.dtype))
    return out, lse


@torch.library.register_fake("fremure::segment_attention_backward")
def _fake_backward(grad_out, q, k, v, out, lse, segment_offsets, scale):
    _check_fake("segment_attention_backward", _check_backward_inputs, grad_out, q, k, v, out, lse, segment_offsets)
    return tuple(torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, segment_offsets, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, segment_offsets)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, segment_offsets = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None
    dq, dk, dv = torch.ops.fremure.segment_attention_backward(grad_out, q, k, v, out, lse, segment_offsets,
                                                              ctx.scale)
    return (
        dq if ctx.needs_input_grad[0] else None,
        dk if ctx.needs_input_grad[1] else None,
        dv if ctx.needs_input_grad[2] else None,
        None,
        None,
    )


torch.library.register_autograd("fremure::segment_attention", _backward, setup_context=_setup_context)
