"""Triton kernels of bayes_mc: the mean over S Monte-Carlo samples of act(mu + eps * sqrt(exp(logvar)))
without materialising S x B x C. Noise is read from ``noise`` [S, B, C] or generated in the kernel
with Philox (``tl.randn(seed, offset)``, offset = (s * B + b) * C + c) and regenerated in backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops.bayes_mc import check_bayes_mc, check_bayes_mc_backward
from . import next_power_of_2
from .class_tiles import activation, activation_backward, class_tile, sample_noise

MODE_EVAL, MODE_NOISE, MODE_SEED = 0, 1, 2
ACT_SIGMOID, ACT_SOFTMAX = 0, 1  # ACT doubles as class_tiles' SOFTMAX flag


@triton.jit
def _bayes_mc_fwd(mu_ptr, logvar_ptr, noise_ptr, out_ptr, seed, B, C, S,
                  MODE: tl.constexpr, ACT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    offs, mask, col_ok = class_tile(B, C, BLOCK_B, BLOCK_C)
    mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if MODE == 0:
        acc = activation(mu, col_ok, ACT)
    else:
        std = tl.sqrt(tl.exp(tl.load(logvar_ptr + offs, mask=mask, other=0.0).to(tl.float32)))
        acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
        for s in range(S):
            eps = sample_noise(noise_ptr, seed, s, offs, mask, B * C, MODE)
            acc += activation(mu + eps * std, col_ok, ACT)
        acc = acc / S
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bayes_mc_bwd(dout_ptr, mu_ptr, logvar_ptr, noise_ptr, dmu_ptr, dlogvar_ptr, seed, B, C, S,
                  MODE: tl.constexpr, ACT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    offs, mask, col_ok = class_tile(B, C, BLOCK_B, BLOCK_C)
    mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dmu = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    dlogvar = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    if MODE == 0:
        dmu = activation_backward(dout, activation(mu, col_ok, ACT), ACT)
    else:
        std = tl.sqrt(tl.exp(tl.load(logvar_ptr + offs, mask=mask, other=0.0).to(tl.float32)))
        da = dout / S
        for s in range(S):
            eps = sample_noise(noise_ptr, seed, s, offs, mask, B * C, MODE)
            dz = activation_backward(da, activation(mu + eps * std, col_ok, ACT), ACT)
            dmu += dz
            # d sqrt(exp(l)) / dl = 0.5 * sqrt(exp(l))
            dlogvar += dz * eps * 0.5 * std
    tl.store(dmu_ptr + offs, dmu.to(dmu_ptr.dtype.element_ty), mask=mask)
    tl.store(dlogvar_ptr + offs, dlogvar.to(dlogvar_ptr.dtype.element_ty), mask=mask)


def _mode(noise: torch.Tensor | None, seed: int | None) -> int:
    if noise is not None:
        return MODE_NOISE
    return MODE_EVAL if seed is None else MODE_SEED


def _launch_args(mu: torch.Tensor) -> tuple[int, int, int, int]:
    B, C = mu.shape
    block_c = next_power_of_2(C)
    block_b = max(1, min(64, 2048 // block_c))
    return B, C, block_b, block_c


def bayes_mc_forward(mu, logvar, noise, seed, samples, activation):
    """mu, logvar: [B, C]; noise: [S, B, C] or None; seed: int or None -> [B, C] (mu's dtype)."""
    check_bayes_mc(mu, logvar, noise, seed, samples, activation)
    mu, logvar = mu.contiguous(), logvar.contiguous()
    noise = noise.contiguous() if noise is not None else mu
    B, C, block_b, block_c = _launch_args(mu)
    out = torch.empty_like(mu)
    if B == 0 or C == 0:
        return out
    act = ACT_SOFTMAX if activation == "softmax" else ACT_SIGMOID
    _bayes_mc_fwd[(triton.cdiv(B, block_b),)](
        mu, logvar, noise, out, 0 if seed is None else int(seed), B, C, int(samples),
        MODE=_mode(noise if noise is not mu else None, seed), ACT=act, BLOCK_B=block_b, BLOCK_C=block_c)
    return out


def bayes_mc_backward(grad_out, mu, logvar, noise, seed, samples, activation):
    """Gradients (d_mu, d_logvar), each [B, C], recomputing (or regenerating) the noise."""
    check_bayes_mc_backward(grad_out, mu, logvar, noise, seed, samples, activation)
    has_noise = noise is not None
    mu, logvar, grad_out = mu.contiguous(), logvar.contiguous(), grad_out.contiguous()
    noise = noise.contiguous() if has_noise else mu
    B, C, block_b, block_c = _launch_args(mu)
    dmu, dlogvar = torch.empty_like(mu), torch.empty_like(logvar)
    if B == 0 or C == 0:
        return dmu, dlogvar
    act = ACT_SOFTMAX if activation == "softmax" else ACT_SIGMOID
    mode = MODE_NOISE if has_noise else (MODE_EVAL if seed is None else MODE_SEED)
    _bayes_mc_bwd[(triton.cdiv(B, block_b),)](
        grad_out, mu, logvar, noise, dmu, dlogvar, 0 if seed is None else int(seed), B, C, int(samples),
        MODE=mode, ACT=act, BLOCK_B=block_b, BLOCK_C=block_c)
    if mode == MODE_EVAL:
        dlogvar.zero_()
    return dmu, dlogvar
