"""segment_attention: multi-head softmax attention restricted to contiguous segments of a packed
token array (the pairs of one frame, or of one temporal window), with no padding computed."""

from __future__ import annotations

import math

import torch

from .. import reference as _reference
from ..dispatch import compiled
from ._common import check_float, check_like, check_number, check_seed, check_shape, check_tensor

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
            the kernel (ValueError naming ``segment_offsets``).
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
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        check_float(t, name)
    check_tensor(segment_offsets, "segment_offsets")
    if scale is None:
        # 1 / sqrt(Dh); a q without a head dimension gets a stand-in and is rejected by the check
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.dim() and q.shape[-1] else 1.0
    else:
        check_number(scale, "scale")
    check_number(dropout_p, "dropout_p")
    args = (q, k, v, segment_offsets, float(scale))
    if dropout_p != 0.0:  # NaN included: the checks reject it
        args += (float(dropout_p), _draw_seed() if seed is None else check_seed(seed))
    elif seed is not None:
        check_seed(seed)
    if not compiled("segment_attention", q.device):
        check_segment_attention(*args)
        return _reference.segment_attention(*args)
    return torch.ops.fremure.segment_attention(*args)[0]


def _draw_seed() -> int:
    """A fresh seed from torch's default CPU generator (torch.manual_seed makes it reproducible)."""
    return int(torch.randint(0, _SEED_HIGH, (), dtype=torch.int64))


def check_segment_attention(q, k, v, segment_offsets, scale, dropout_p=0.0, seed=None) -> None:
    """What the C++ kernel checks, for the paths without one: the fake kernel, the Triton launcher
    and the reference fallback (device, dtype, shape and argument values; no tensor data read)."""
    check_float(q, "q")
    check_shape(q.dim() == 3 and q.shape[1] >= 1 and q.shape[2] >= 1, "q", "[T, H, Dh] with H >= 1 and Dh >= 1", q)
    check_like(q, "q", k, "k", shape=True)
    check_like(q, "q", v, "v", shape=True)
    check_like(q, "q", segment_offsets, "segment_offsets", dtype=False)
    if segment_offsets.dtype not in _INDEX_DTYPES:
        raise TypeError(f"segment_offsets must be an int64 (or int32) tensor, got {segment_offsets.dtype}")
    check_shape(segment_offsets.dim() == 1 and segment_offsets.shape[0] >= 1, "segment_offsets",
                "a 1-D tensor [S + 1] with at least one element", segment_offsets)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if not 0.0 <= dropout_p < 1.0:  # also rejects NaN
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0.0 and seed is None:
        raise ValueError("seed must be given when dropout_p > 0 (got None)")


def check_segment_attention_backward(grad_out, q, k, v, out, lse, segment_offsets, scale, dropout_p=0.0,
                                     seed=None) -> None:
    check_segment_attention(q, k, v, segment_offsets, scale, dropout_p, seed)
    check_like(q, "q", grad_out, "grad_out", shape=True)
    check_like(q, "q", out, "out", shape=True)
    check_like(q, "q", lse, "lse", dtype=False)
    if lse.dtype != _lse_dtype(q.dtype):
        raise TypeError(f"lse must have dtype {_lse_dtype(q.dtype)} for {q.dtype} inputs, got {lse.dtype}")
    check_shape(lse.shape == q.shape[:2], "lse", f"[T, H] = {tuple(q.shape[:2])}", lse)


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.library.register_fake("fremure::segment_attention")
def _fake(q, k, v, segment_offsets, scale, dropout_p=0.0, seed=None):
    check_segment_attention(q, k, v, segment_offsets, scale, dropout_p, seed)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(q.shape[:2], dtype=_lse_dtype(q.dtype))
    return out, lse


@torch.library.register_fake("fremure::segment_attention_backward")
def _fake_backward(grad_out, q, k, v, out, lse, segment_offsets, scale, dropout_p=0.0, seed=None):
    check_segment_attention_backward(grad_out, q, k, v, out, lse, segment_offsets, scale, dropout_p, seed)
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
    dropout = () if ctx.dropout[0] == 0.0 else ctx.dropout      # (dropout_p, seed) only with dropout
    grads = torch.ops.fremure.segment_attention_backward(grad_out, q, k, v, out, lse, segment_offsets, ctx.scale,
                                                         *dropout)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:3])), None, None, None, None)


torch.library.register_autograd("fremure::segment_attention", _backward, setup_context=_setup_context)
