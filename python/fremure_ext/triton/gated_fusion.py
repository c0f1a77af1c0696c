"""Triton kernels of gated_fusion.

Forward: one GEMM over [LN0(head) | LN0(tail)] with the LayerNorms applied as the tiles are loaded
(prologue) and sigmoid / temperature / clamp / lerp applied to the accumulator (epilogue), so neither
the [N, 2D + Dc] concatenation nor the normalised branches are ever written. The condition's
contribution (LN0(cond) W_q^T, [D] or [N, D]) is folded into the bias beforehand.
Backward: one fused elementwise pass gives dlogits and the direct branch gradients; the GEMMs
(dlogits W, dlogits^T [h | t | q]) run on the vendor BLAS; a row kernel finishes the LayerNorm backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..ops.gated_fusion import check_gated_fusion, check_gated_fusion_backward
from . import next_power_of_2

LN_EPS = 1e-5


@triton.jit
def _row_stats_kernel(x_ptr, stats_ptr, D, eps, BLOCK_D: tl.constexpr):
    # stats[r] = (mean, rstd) of row r, two passes over the row in float32.
    r = tl.program_id(0)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        acc += tl.load(x_ptr + r * D + d, mask=d < D, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(x_ptr + r * D + d, mask=d < D, other=0.0).to(tl.float32)
        c = tl.where(d < D, x - mean, 0.0)
        acc += c * c
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / D + eps)
    tl.store(stats_ptr + 2 * r, mean)
    tl.store(stats_ptr + 2 * r + 1, rstd)


@triton.jit
def _normalised_tile(x_ptr, stats_ptr, rows, cols, row_ok, col_ok, D):
    x = tl.load(x_ptr + rows[:, None] * D + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    mean = tl.load(stats_ptr + 2 * rows, mask=row_ok, other=0.0)
    rstd = tl.load(stats_ptr + 2 * rows + 1, mask=row_ok, other=0.0)
    xn = (x.to(tl.float32) - mean[:, None]) * rstd[:, None]
    return tl.where(row_ok[:, None] & col_ok[None, :], xn, 0.0)


@triton.jit
def _fwd_kernel(head_ptr, tail_ptr, hstats_ptr, tstats_ptr, w_ptr, bias_ptr, out_ptr, sig_ptr,
                N, D, W_COLS, inv_temperature, lo, hi,
                BIAS_PER_ROW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    col_ok = cols < D
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        w_mask = col_ok[:, None] & k_ok[None, :]
        h = _normalised_tile(head_ptr, hstats_ptr, rows, ks, row_ok, k_ok, D)
        w_h = tl.load(w_ptr + cols[:, None] * W_COLS + ks[None, :], mask=w_mask, other=0.0).to(tl.float32)
        acc += tl.dot(h, tl.trans(w_h), input_precision=PRECISION)
        t = _normalised_tile(tail_ptr, tstats_ptr, rows, ks, row_ok, k_ok, D)
        w_t = tl.load(w_ptr + cols[:, None] * W_COLS + D + ks[None, :], mask=w_mask, other=0.0).to(tl.float32)
        acc += tl.dot(t, tl.trans(w_t), input_precision=PRECISION)
    mask = row_ok[:, None] & col_ok[None, :]
    if BIAS_PER_ROW:
        acc += tl.load(bias_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0)
    else:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0)[None, :]
    sig = tl.sigmoid(acc * inv_temperature)
    gate = tl.clamp(sig, lo, hi, propagate_nan=tl.PropagateNan.ALL)
    h = _normalised_tile(head_ptr, hstats_ptr, rows, cols, row_ok, col_ok, D)
    t = _normalised_tile(tail_ptr, tstats_ptr, rows, cols, row_ok, col_ok, D)
    out = h + (1.0 - gate) * (t - h)
    ptrs = rows[:, None] * D + cols[None, :]
    tl.store(out_ptr + ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(sig_ptr + ptrs, sig.to(sig_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_elementwise_kernel(dout_ptr, head_ptr, tail_ptr, hstats_ptr, tstats_ptr, sig_ptr,
                            dz_ptr, hn_ptr, tn_ptr, dh_ptr, dt_ptr, N, D, inv_temperature, lo, hi,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]
    ptrs = rows[:, None] * D + cols[None, :]
    dout = tl.load(dout_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
    sig = tl.load(sig_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
    h = _normalised_tile(head_ptr, hstats_ptr, rows, cols, row_ok, col_ok, D)
    t = _normalised_tile(tail_ptr, tstats_ptr, rows, cols, row_ok, col_ok, D)
    gate = tl.clamp(sig, lo, hi, propagate_nan=tl.PropagateNan.ALL)
    # torch.clamp passes the gradient where lo <= sig <= hi.
    dsig = tl.where((sig >= lo) & (sig <= hi), dout * (h - t), 0.0)
    dz = dsig * sig * (1.0 - sig) * inv_temperature
    tl.store(dz_ptr + ptrs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
    tl.store(hn_ptr + ptrs, h.to(hn_ptr.dtype.element_ty), mask=mask)
    tl.store(tn_ptr + ptrs, t.to(tn_ptr.dtype.element_ty), mask=mask)
    tl.store(dh_ptr + ptrs, (dout * gate).to(dh_ptr.dtype.element_ty), mask=mask)
    tl.store(dt_ptr + ptrs, (dout * (1.0 - gate)).to(dt_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ln_backward_kernel(dxn_ptr, xn_ptr, stats_ptr, dx_ptr, D, BLOCK_D: tl.constexpr):
    # dx = rstd * (dxn - mean(dxn) - xn * mean(dxn * xn)), one row per program.
    r = tl.program_id(0)
    s1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        g = tl.load(dxn_ptr + r * D + d, mask=d < D, other=0.0).to(tl.float32)
        xn = tl.load(xn_ptr + r * D + d, mask=d < D, other=0.0).to(tl.float32)
        s1 += g
        s2 += g * xn
    m1 = tl.sum(s1, axis=0) / D
    m2 = tl.sum(s2, axis=0) / D
    rstd = tl.load(stats_ptr + 2 * r + 1)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        g = tl.load(dxn_ptr + r * D + d, mask=d < D, other=0.0).to(tl.float32)
        xn = tl.load(xn_ptr + r * D + d, mask=d < D, other=0.0).to(tl.float32)
        tl.store(dx_ptr + r * D + d, (rstd * (g - m1 - xn * m2)).to(dx_ptr.dtype.element_ty), mask=d < D)


def _precision(dtype: torch.dtype) -> str:
    # Follow torch's own float32 matmul setting so results match F.linear on the same machine.
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _row_stats(x: torch.Tensor) -> torch.Tensor:
    n, d = x.shape
    stats = torch.empty((n, 2), dtype=torch.float32, device=x.device)
    if n:
        _row_stats_kernel[(n,)](x, stats, d, LN_EPS, BLOCK_D=min(1024, next_power_of_2(d)))
    return stats


def _folded_bias(cond, weight, bias, d):
    """bias + LN0(cond) W_q^T in float32: [D] for a shared condition, [N, D] per row."""
    q = F.layer_norm(cond.float(), (cond.shape[-1],))
    folded = q @ weight[:, 2 * d:].float().t()
    return folded + bias.float() if bias is not None else folded


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def gated_fusion_forward(head, tail, cond, weight, bias, temperature, lo, hi):
    """head, tail: [N, D]; cond: [Dc] or [N, Dc]; weight: [D, 2D+Dc]; bias: [D] or None.
    Returns (out [N, D], gate_sigmoid [N, D]) in head's dtype."""
    check_gated_fusion(head, tail, cond, weight, bias, temperature, lo, hi)
    head, tail, weight = head.contiguous(), tail.contiguous(), weight.contiguous()
    n, d = head.shape
    out, sig = torch.empty_like(head), torch.empty_like(head)
    if n == 0:
        return out, sig
    folded = _folded_bias(cond, weight, bias, d).to(_work_dtype(head)).contiguous()
    block_m, block_n, block_k = 32, 64, 32
    grid = (triton.cdiv(n, block_m), triton.cdiv(d, block_n))
    _fwd_kernel[grid](head, tail, _row_stats(head), _row_stats(tail), weight, folded, out, sig,
                      n, d, weight.shape[1], 1.0 / float(temperature), float(lo), float(hi),
                      BIAS_PER_ROW=folded.dim() == 2, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                      PRECISION=_precision(head.dtype))
    return out, sig


def gated_fusion_backward(grad_out, head, tail, cond, weight, bias, gate_sigmoid, temperature, lo, hi):
    """Gradients (head, tail, cond, weight, bias); the bias gradient is empty when bias is None."""
    check_gated_fusion_backward(grad_out, head, tail, cond, weight, bias, gate_sigmoid, temperature, lo, hi)
    if gate_sigmoid is None:
        _, gate_sigmoid = gated_fusion_forward(head, tail, cond, weight, bias, temperature, lo, hi)
    head, tail, weight = head.contiguous(), tail.contiguous(), weight.contiguous()
    grad_out, gate_sigmoid = grad_out.contiguous(), gate_sigmoid.contiguous()
    n, d = head.shape
    work = _work_dtype(head)
    dz, hn, tn, dh, dt = (torch.empty((n, d), dtype=work, device=head.device) for _ in range(5))
    hstats, tstats = _row_stats(head), _row_stats(tail)
    if n:
        block_m, block_n = 16, 128
        _bwd_elementwise_kernel[(triton.cdiv(n, block_m), triton.cdiv(d, block_n))](
            grad_out, head, tail, hstats, tstats, gate_sigmoid, dz, hn, tn, dh, dt, n, d,
            1.0 / float(temperature), float(lo), float(hi), BLOCK_M=block_m, BLOCK_N=block_n)
    w = weight.to(work)
    dh.addmm_(dz, w[:, :d])
    dt.addmm_(dz, w[:, d:2 * d])
    qn = F.layer_norm(cond.to(work), (cond.shape[-1],))
    dweight = torch.empty_like(w)
    torch.mm(dz.t(), hn, out=dweight[:, :d])
    torch.mm(dz.t(), tn, out=dweight[:, d:2 * d])
    dq = dz @ w[:, 2 * d:]
    if cond.dim() == 1:
        dweight[:, 2 * d:] = torch.outer(dz.sum(0), qn)
        dq = dq.sum(0)
    else:
        torch.mm(dz.t(), qn, out=dweight[:, 2 * d:])
    dcond = _layer_norm_backward(dq, qn, cond.to(work))
    dhead, dtail = torch.empty_like(head), torch.empty_like(tail)
    if n:
        block_d = min(1024, next_power_of_2(d))
        _ln_backward_kernel[(n,)](dh, hn, hstats, dhead, d, BLOCK_D=block_d)
        _ln_backward_kernel[(n,)](dt, tn, tstats, dtail, d, BLOCK_D=block_d)
    dbias = dz.sum(0).to(head.dtype) if bias is not None else head.new_empty((0,))
    return dhead, dtail, dcond.to(cond.dtype), dweight.to(weight.dtype), dbias


def _layer_norm_backward(dxn: torch.Tensor, xn: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + LN_EPS)
    return rstd * (dxn - dxn.mean(-1, keepdim=True) - xn * (dxn * xn).mean(-1, keepdim=True))
