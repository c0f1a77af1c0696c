"""Pure-PyTorch segment_attention, computed the way the published code does: pack the segments
into a zero-padded batch, run softmax attention with a key padding mask (what
nn.MultiheadAttention does between its in/out projections), and drop the padding rows."""

from __future__ import annotations

import math

import torch

__all__ = ["segment_attention", "segment_attention_lse"]


def pad_segments(x: torch.Tensor, segment_offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Scatter packed tokens ``[T, ...]`` into ``[S', Lmax, ...]`` over the non-empty segments.

    Returns the padded tensor, the key padding mask ``[S', Lmax]`` (True = padding, as
    nn.MultiheadAttention expects) and the index ``(segment, position)`` of every token.
    Empty segments get no batch row: a row of padding only would have no key to attend to.
    """
    offsets = segment_offsets.to(device=x.device, dtype=torch.long)
    lengths = offsets[1:] - offsets[:-1]
    nonempty = lengths > 0
    lengths = lengths[nonempty]
    batch = int(lengths.numel())
    lmax = int(lengths.max()) if batch else 0
    row = torch.repeat_interleave(torch.arange(batch, device=x.device), lengths)
    starts = offsets[:-1][nonempty]
    pos = torch.arange(x.shape[0], device=x.device) - starts[row]
    index = (row, pos)
    padded = x.new_zeros((batch, lmax, *x.shape[1:]))
    padded = padded.index_put(index, x)
    mask = torch.arange(lmax, device=x.device).unsqueeze(0) >= lengths.unsqueeze(1)
    return padded, mask, index


def unpad_segments(padded: torch.Tensor, index: tuple) -> torch.Tensor:
    """Inverse of :func:`pad_segments`: the rows of real tokens, in packed order."""
    return padded[index]


def _scores(q, k, segment_offsets, scale):
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    qp, mask, index = pad_segments(q, segment_offsets)
    kp, _, _ = pad_segments(k, segment_offsets)
    # [S', H, Lq, Lk], padding keys at -inf (as the attention mask of nn.MultiheadAttention)
    scores = torch.einsum("sqhd,skhd->shqk", qp, kp) * scale
    scores = scores.masked_fill(mask[:, None, None, :], float("-inf"))
    return scores, index


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_offsets: torch.Tensor,
                      scale: float | None = None) -> torch.Tensor:
    """Reference of :func:`fremure_ext.segment_attention`.

    q, k, v: ``[T, H, Dh]``; segment_offsets: ``[S + 1]`` int64 CSR; returns ``[T, H, Dh]``.
    Padding query rows are computed and then discarded, as in the published model.
    """
    scores, index = _scores(q, k, segment_offsets, scale)
    probs = torch.softmax(scores, dim=-1)
    vp, _, _ = pad_segments(v, segment_offsets)
    out = torch.einsum("shqk,skhd->sqhd", probs, vp)
    return unpad_segments(out, index)


def segment_attention_lse(q: torch.Tensor, k: torch.Tensor, segment_offsets: torch.Tensor,
                          scale: float | None = None) -> torch.Tensor:
    """Log-sum-exp of every query's scaled scores over its segment's keys: ``[T, H]``."""
    scores, index = _scores(q, k, segment_offsets, scale)
    lse = torch.logsumexp(scores, dim=-1)  # [S', H, Lq]
    return unpad_segments(lse.transpose(1, 2), index)
