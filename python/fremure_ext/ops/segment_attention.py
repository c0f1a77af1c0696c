"""segment_attention: multi-head softmax attention restricted to contiguous segments of a packed
token array (the pairs of one frame, or of one temporal window), with no padding computed."""

from __future__ import annotations

import math

import torch

from .. import reference as _reference
from ..dispatch import compiled
from ._common import check_float, check_ndim, check_same, check_seed, check_tensor

__all__ = ["segment_attention"]

_INDEX_DTYPES = (torch.int64, torch.int32)
_SEED_HIGH = 2**62  # drawn seeds are in [0, 2**62)


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_offsets: torch.Tensor,
                      scale: float | None = None, dropout_p: float = 0.0, seed: int | None = None) -> torch.Tensor:
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
        dropout_p: probability in ``[0, 1)`` of dropping each attention probability, as
            ``nn.MultiheadAttention(dropout=p)`` in training: ``out = (P * M / (1 - p)) V`` with
            ``P`` the softmax and ``M`` a Bernoulli(1 - p) keep-mask. 0 (default) is the
            dropout-free op, unchanged. Pass ``mha.dropout if mha.training else 0.0``.
        seed: int64 seed of the keep-mask (a SymInt under torch.compile, so a new seed per step
            does not recompile). The mask is a deterministic function of the seed:
            ``M[t, h, u] = tl.rand(seed, (t * H + h) * T + u) >= float32(dropout_p)`` for query
            token ``t``, head ``h`` and key token ``u`` (indices into the packed ``[T, H, Dh]``
            array), identical on CPU, in Triton and in the reference, and regenerated in backward
            (never stored). When ``dropout_p > 0`` and ``seed`` is None, a seed is drawn with
            ``torch.randint`` from torch's default CPU generator (so ``torch.manual_seed``
            controls it); under torch.compile pass a seed explicitly, since drawing one reads a
            tensor's value. Ignored when ``dropout_p == 0``.

    Returns:
        ``[T, H, Dh]`` tensor of q's dtype, differentiable in q, k and v. The per-query
        log-sum-exp that backward uses is the op's second output
        (``torch.ops.fremure.segment_attention``), not returned here; it is the log-sum-exp of
        the undropped scores.
    """
    _check_inputs(q, k, v, segment_offsets)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    dropout_p = _check_dropout_p(dropout_p)
    if dropout_p == 0.0:
        if seed is not None:
            check_seed(seed)
        if not compiled("segment_attention", q.device):
            return _reference.segment_attention(q, k, v, segment_offsets, float(scale))
        return torch.ops.fremure.segment_attention(q, k, v, segment_offsets, float(scale))[0]
    seed = _draw_seed() if seed is None else check_seed(seed)
    if not compiled("segment_attention", q.device):
        return _reference.segment_attention(q, k, v, segment_offsets, float(scale), dropout_p, seed)
    return torch.ops.fremure.segment_attention(q, k, v, segment_offsets, float(scale), dropout_p, seed)[0]


def _check_dropout_p(dropout_p: object) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:  # also rejects NaN
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    return float(dropout_p)


def _draw_seed() -> int:
    """A fresh seed from torch's default CPU generator (torch.manual_seed makes it reproducible)."""
    return int(torch.randint(0, _SEED_HIGH, (), dtype=torch.int64))


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


def _check_dropout_args(dropout_p, seed) -> None:
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0.0 and seed is None:
        raise ValueError("seed must be given when dropout_p > 0 (got None)")


@torch.library.register_fake("fremure::segment_attention")
def _fake(q, k, v, segment_offsets, scale, dropout_p=0.0, seed=None):
    _check_fake("segment_attention", _check_inputs, q, k, v, segment_offsets)
    _check_fake("segment_attention", _check_dropout_args, dropout_p, seed)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(q.shape[:2], dtype=_lse_dtype(q.dtype))
    return out, lse


@torch.library.register_fake("fremure::segment_attention_backward")
def _fake_backward(grad_out, q, k, v, out, lse, segment_offsets, scale, dropout_p=0.0, seed=None):
    _check_fake("segment_attention_backward", _check_backward_inputs, grad_out, q, k, v, out, lse, segment_offsets)
    _check_fake("segment_attention_backward", _check_dropout_args, dropout_p, seed)
    return tuple(torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, segment_offsets, scale, *dropout = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, segment_offsets)
    ctx.scale = scale
    # (dropout_p, seed) as the forward got them: the backward regenerates the same keep-mask
    ctx.dropout = tuple(dropout) + (0.0, None)[len(dropout):]


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, segment_offsets = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None, None, None
    dropout_p, seed = ctx.dropout
    if dropout_p == 0.0:
        grads = torch.ops.fremure.segment_attention_backward(grad_out, q, k, v, out, lse, segment_offsets, ctx.scale)
    else:
        grads = torch.ops.fremure.segment_attention_backward(grad_out, q, k, v, out, lse, segment_offsets, ctx.scale,
                                                             dropout_p, seed)
    dq, dk, dv = grads
    return (
        dq if ctx.needs_input_grad[0] else None,
        dk if ctx.needs_input_grad[1] else None,
        dv if ctx.needs_input_grad[2] else None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd("fremure::segment_attention", _backward, setup_context=_setup_context)
