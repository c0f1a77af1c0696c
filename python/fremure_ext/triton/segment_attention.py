"""Triton kernels of segment_attention: flash-style attention restricted to contiguous segments of a
packed token array [T, H, Dh]. One program per (segment, head) walks the segment in tiles with an
online softmax; head dims that are not a power of two (FReMuRe: 242) are masked inside a wider tile.
Backward recomputes the probabilities from q, k and the saved logsumexp instead of storing scores;
dK/dV and dQ are computed in two passes of the same program, so no atomics are needed.

Attention dropout (DROPOUT, dropout_p > 0): probability (query token t, head h, key token u) is
kept iff ``tl.rand(seed, (t * H + h) * T + u) >= dropout_p`` (packed token indices, int64
counters), the layout of the CPU kernel and the reference, so all three drop the same entries.
The mask is regenerated tile by tile in backward, never stored.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..ops.segment_attention import check_segment_attention, check_segment_attention_backward
from . import next_power_of_2


@triton.jit
def _tile(ptr, rows, row_ok, h, d, d_ok, stride_t, stride_h):
    return tl.load(ptr + rows[:, None] * stride_t + h * stride_h + d[None, :],
                   mask=row_ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def _store_tile(ptr, x, rows, row_ok, h, d, d_ok, stride_t, stride_h):
    tl.store(ptr + rows[:, None] * stride_t + h * stride_h + d[None, :], x.to(ptr.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _keep(seed, dropout_p, rows, cols, h, H, T):
    """Dropout keep-mask [rows, cols] of head h (rows and cols are int64 packed token indices)."""
    return tl.rand(seed, (rows[:, None] * H + h) * T + cols[None, :]) >= dropout_p


@triton.jit
def _program(offsets_ptr, Dh, BLOCK_D: tl.constexpr):
    """(h, start, end, d, d_ok): this program's head, token range [start, end) and head-dim lanes."""
    seg = tl.program_id(0)
    start = tl.load(offsets_ptr + seg)
    end = tl.load(offsets_ptr + seg + 1)
    d = tl.arange(0, BLOCK_D)
    return tl.program_id(1), start, end, d, d < Dh


@triton.jit
def _kv_tiles(k_ptr, v_ptr, n0, end, h, d, d_ok, stride_t, stride_h, BLOCK_N: tl.constexpr):
    """(cols, col_ok, k, v) of the key tile starting at token n0."""
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < end
    k = _tile(k_ptr, cols, col_ok, h, d, d_ok, stride_t, stride_h)
    v = _tile(v_ptr, cols, col_ok, h, d, d_ok, stride_t, stride_h)
    return cols, col_ok, k, v


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, offsets_ptr, out_ptr, lse_ptr, scale, Dh, stride_t, stride_h,
                seed, dropout_p, keep_scale, T,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                DROPOUT: tl.constexpr):
    h, start, end, d, d_ok = _program(offsets_ptr, Dh, BLOCK_D)
    for m0 in range(start, end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < end
        q = _tile(q_ptr, rows, row_ok, h, d, d_ok, stride_t, stride_h)
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for n0 in range(start, end, BLOCK_N):
            cols, col_ok, k, v = _kv_tiles(k_ptr, v_ptr, n0, end, h, d, d_ok, stride_t, stride_h, BLOCK_N)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if DROPOUT:  # after the row sum: lse is that of the undropped softmax
                p = tl.where(_keep(seed, dropout_p, rows, cols, h, tl.num_programs(1), T), p, 0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION).to(tl.float32)
            m_i = m_new
        out = acc / l_i[:, None]
        if DROPOUT:
            out = out * keep_scale
        _store_tile(out_ptr, out, rows, row_ok, h, d, d_ok, stride_t, stride_h)
        tl.store(lse_ptr + rows * tl.num_programs(1) + h,
                 (m_i + tl.log(l_i)).to(lse_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _delta_kernel(out_ptr, dout_ptr, delta_ptr, n_rows, Dh, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    # delta[t, h] = sum_d dO * O, rows = flattened (t, h)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    mask = (rows < n_rows)[:, None] & (d < Dh)[None, :]
    o = tl.load(out_ptr + rows[:, None] * Dh + d[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(dout_ptr + rows[:, None] * Dh + d[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(delta_ptr + rows, tl.sum(o * do, axis=1), mask=rows < n_rows)


@triton.jit
def _query_tiles(q_ptr, dout_ptr, lse_ptr, delta_ptr, m0, end, h, H, d, d_ok, stride_t, stride_h,
                 BLOCK_M: tl.constexpr):
    """(rows, row_ok, q, dO, lse, delta) of the query tile starting at token m0."""
    rows = m0 + tl.arange(0, BLOCK_M)
    row_ok = rows < end
    q = _tile(q_ptr, rows, row_ok, h, d, d_ok, stride_t, stride_h)
    do = _tile(dout_ptr, rows, row_ok, h, d, d_ok, stride_t, stride_h)
    lse = tl.load(lse_ptr + rows * H + h, mask=row_ok, other=0.0).to(tl.float32)
    delta = tl.load(delta_ptr + rows * H + h, mask=row_ok, other=0.0)
    return rows, row_ok, q, do, lse, delta


@triton.jit
def _p_ds_tile(q, k, v, do, lse, delta, row_ok, col_ok, scale, rows, cols, h, H, T, seed, dropout_p, keep_scale,
               PRECISION: tl.constexpr, DROPOUT: tl.constexpr):
    """Probabilities recomputed from the saved logsumexp, and dS = P * (dP - delta) * scale.

    With DROPOUT, dP = (dO . v) * M / (1 - p) and the returned probabilities are the dropped
    ones P * M / (1 - p) (what dV needs); delta = rowsum(dO * O) of the dropped output."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale
    p = tl.exp(s - lse[:, None])
    p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION).to(tl.float32)
    if DROPOUT:
        keep = _keep(seed, dropout_p, rows, cols, h, H, T)
        dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None]) * scale
        p = tl.where(keep, p * keep_scale, 0.0)
    else:
        ds = p * (dp - delta[:, None]) * scale
    return p, ds


@triton.jit
def _bwd_kernel(q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, offsets_ptr, dq_ptr, dk_ptr, dv_ptr,
                scale, Dh, H, stride_t, stride_h, seed, dropout_p, keep_scale, T,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                DROPOUT: tl.constexpr):
    h, start, end, d, d_ok = _program(offsets_ptr, Dh, BLOCK_D)
    # Pass 1: dK and dV, one key tile at a time, over every query tile of the segment.
    for n0 in range(start, end, BLOCK_N):
        cols, col_ok, k, v = _kv_tiles(k_ptr, v_ptr, n0, end, h, d, d_ok, stride_t, stride_h, BLOCK_N)
        dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        for m0 in range(start, end, BLOCK_M):
            rows, row_ok, q, do, lse, delta = _query_tiles(q_ptr, dout_ptr, lse_ptr, delta_ptr, m0, end, h, H, d,
                                                           d_ok, stride_t, stride_h, BLOCK_M)
            p, ds = _p_ds_tile(q, k, v, do, lse, delta, row_ok, col_ok, scale, rows, cols, h, H, T,
                               seed, dropout_p, keep_scale, PRECISION, DROPOUT)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION).to(tl.float32)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION).to(tl.float32)
        _store_tile(dk_ptr, dk, cols, col_ok, h, d, d_ok, stride_t, stride_h)
        _store_tile(dv_ptr, dv, cols, col_ok, h, d, d_ok, stride_t, stride_h)
    # Pass 2: dQ, one query tile at a time.
    for m0 in range(start, end, BLOCK_M):
        rows, row_ok, q, do, lse, delta = _query_tiles(q_ptr, dout_ptr, lse_ptr, delta_ptr, m0, end, h, H, d, d_ok,
                                                       stride_t, stride_h, BLOCK_M)
        dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for n0 in range(start, end, BLOCK_N):
            cols, col_ok, k, v = _kv_tiles(k_ptr, v_ptr, n0, end, h, d, d_ok, stride_t, stride_h, BLOCK_N)
            _, ds = _p_ds_tile(q, k, v, do, lse, delta, row_ok, col_ok, scale, rows, cols, h, H, T,
                               seed, dropout_p, keep_scale, PRECISION, DROPOUT)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION).to(tl.float32)
        _store_tile(dq_ptr, dq, rows, row_ok, h, d, d_ok, stride_t, stride_h)


def _config(dtype: torch.dtype, dh: int) -> dict:
    # float32 stays exact IEEE (the reference's numbers); half types use tensor cores.
    precision = "ieee" if dtype in (torch.float32, torch.float64) else "tf32"
    return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=max(16, next_power_of_2(dh)), PRECISION=precision)


def _dropout_args(dropout_p, seed) -> dict:
    """Kernel arguments of the dropout; the seed as its unsigned 64-bit pattern (what Philox keys on)."""
    dropout_p = float(dropout_p)
    if dropout_p == 0.0:
        return dict(seed=0, dropout_p=0.0, keep_scale=1.0, DROPOUT=False)
    return dict(seed=int(seed) & (2**64 - 1), dropout_p=dropout_p, keep_scale=1.0 / (1.0 - dropout_p), DROPOUT=True)


def segment_attention_forward(q, k, v, segment_offsets, scale, dropout_p=0.0, seed=None):
    """q, k, v: [T, H, Dh]; segment_offsets: int64 [S+1] -> (out [T, H, Dh], lse [T, H] float32);
    dropout_p > 0 drops attention probabilities with the keep-mask of ``seed``."""
    check_segment_attention(q, k, v, segment_offsets, scale, dropout_p, seed)
    drop = _dropout_args(dropout_p, seed)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    T, H, Dh = q.shape
    out = torch.empty_like(q)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse = torch.empty((T, H), dtype=lse_dtype, device=q.device)
    S = segment_offsets.numel() - 1
    if T == 0 or S <= 0:
        return out, lse
    offsets = segment_offsets.to(torch.int64).contiguous()
    _fwd_kernel[(S, H)](q, k, v, offsets, out, lse, float(scale), Dh, q.stride(0), q.stride(1), T=T,
                        **drop, **_config(q.dtype, Dh))
    return out, lse


def segment_attention_backward(grad_out, q, k, v, out, lse, segment_offsets, scale, dropout_p=0.0, seed=None):
    """Gradients (dq, dk, dv), each [T, H, Dh], recomputing probabilities from q, k and lse (and
    the dropout keep-mask from ``seed``)."""
    check_segment_attention_backward(grad_out, q, k, v, out, lse, segment_offsets, scale, dropout_p, seed)
    drop = _dropout_args(dropout_p, seed)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    grad_out, out, lse = grad_out.contiguous(), out.contiguous(), lse.contiguous()
    T, H, Dh = q.shape
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    S = segment_offsets.numel() - 1
    if T == 0 or S <= 0:
        return dq, dk, dv
    cfg = _config(q.dtype, Dh)
    delta = torch.empty((T, H), dtype=torch.float32, device=q.device)
    _delta_kernel[(triton.cdiv(T * H, 16),)](out, grad_out, delta, T * H, Dh, BLOCK_R=16, BLOCK_D=cfg["BLOCK_D"])
    offsets = segment_offsets.to(torch.int64).contiguous()
    _bwd_kernel[(S, H)](q, k, v, grad_out, lse, delta, offsets, dq, dk, dv, float(scale), Dh, H,
                        q.stride(0), q.stride(1), T=T, **drop, **cfg)
    return dq, dk, dv
