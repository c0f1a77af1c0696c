"""Pure-PyTorch segment_attention, computed the way the published code does: pack the segments
into a zero-padded batch, run softmax attention with a key padding mask (what
nn.MultiheadAttention does between its in/out projections), optionally drop attention
probabilities (its ``dropout``), and drop the padding rows.

The dropout mask is the kernels' (see :func:`dropout_keep_mask`): probability (query token t,
head h, key token u) is kept iff ``tl.rand(seed, (t * H + h) * T + u) >= float32(dropout_p)``,
with t and u indexed in the packed array of T tokens."""

from __future__ import annotations

import math

import torch

from .philox import philox_uniform

__all__ = ["dropout_keep_mask", "segment_attention", "segment_attention_lse"]


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


def dropout_keep_mask(seed: int, dropout_p: float, query_token: torch.Tensor, head: torch.Tensor,
                      key_token: torch.Tensor, heads: int, tokens: int) -> torch.Tensor:
    """Bool keep-mask of segment_attention's dropout, broadcast over the index tensors given:
    ``tl.rand(seed, (query_token * heads + head) * tokens + key_token) >= float32(dropout_p)``."""
    offset = (query_token.to(torch.int64) * heads + head.to(torch.int64)) * tokens + key_token.to(torch.int64)
    return philox_uniform(seed, offset) >= torch.tensor(dropout_p, dtype=torch.float32)


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_offsets: torch.Tensor,
                      scale: float | None = None, dropout_p: float = 0.0, seed: int | None = None) -> torch.Tensor:
    """Reference of :func:`fremure_ext.segment_attention`.

    q, k, v: ``[T, H, Dh]``; segment_offsets: ``[S + 1]`` int64 CSR; returns ``[T, H, Dh]``.
    Padding query rows are computed and then discarded, as in the published model. With
    ``dropout_p > 0`` (``seed`` required) the probabilities are multiplied by the keep-mask of
    :func:`dropout_keep_mask` and by ``1 / (1 - dropout_p)``, as ``F.dropout`` would.
    """
    scores, index = _scores(q, k, segment_offsets, scale)
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        if seed is None:
            raise ValueError("seed must be given when dropout_p > 0")
        probs = probs * _padded_keep_mask(q, segment_offsets, index, probs.shape, seed, dropout_p)
        probs = probs * (1.0 / (1.0 - dropout_p))
    vp, _, _ = pad_segments(v, segment_offsets)
    out = torch.einsum("shqk,skhd->sqhd", probs, vp)
    return unpad_segments(out, index)


def _padded_keep_mask(q, segment_offsets, index, shape, seed, dropout_p):
    """Keep-mask ``[S', H, Lq, Lk]`` (as probs' dtype) in the padded layout; padding positions
    get arbitrary values (their probabilities are zero or their rows are discarded)."""
    tokens, heads = q.shape[0], q.shape[1]
    batch, _, lmax, _ = shape
    token_of = torch.zeros((batch, lmax), dtype=torch.int64, device=q.device)
    token_of = token_of.index_put(index, torch.arange(tokens, device=q.device))
    head = torch.arange(heads, device=q.device)
    keep = dropout_keep_mask(seed, dropout_p, token_of[:, None, :, None], head[None, :, None, None],
                             token_of[:, None, None, :], heads, tokens)
    return keep.to(q.dtype)


def segment_attention_lse(q: torch.Tensor, k: torch.Tensor, segment_offsets: torch.Tensor,
                          scale: float | None = None) -> torch.Tensor:
    """Log-sum-exp of every query's scaled scores over its segment's keys: ``[T, H]``."""
    scores, index = _scores(q, k, segment_offsets, scale)
    lse = torch.logsumexp(scores, dim=-1)  # [S', H, Lq]
    return unpad_segments(lse.transpose(1, 2), index)
