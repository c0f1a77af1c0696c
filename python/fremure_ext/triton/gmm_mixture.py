"""Triton kernels of gmm_mixture (GMM-Plus head): pred = sum_k softmax_k(pi_logit)_k *
act((mu_k + eps_k sqrt(var_k)) / tau), var_k = clamp(softplus(var_raw_k) + var_eps, floor, ceiling),
with the optional aleatoric term sum_k pi_k / (1 + var_k) + entropy_k(pi). A program owns a tile of
[BLOCK_B, C] (whole class rows, so softmax over C stays in registers) and loops over the K
components; noise is read or generated with Philox (offset (k * B + b) * C + c) and regenerated in
backward. tau is read on the device (no host synchronisation); its gradient is reduced from
per-program partial sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops.gmm_mixture import check_gmm_mixture, check_gmm_mixture_backward
from . import next_power_of_2
from .class_tiles import activation, activation_backward, class_tile, sample_noise

MODE_EVAL, MODE_NOISE, MODE_SEED = 0, 1, 2


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus with beta 1, threshold 20
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0, propagate_nan=tl.PropagateNan.ALL))))


@triton.jit
def _component(mu_ptr, raw_ptr, pi_ptr, noise_ptr, seed, k, offs, mask, BC, m, den, var_eps, var_floor,
               var_ceiling, MODE: tl.constexpr):
    """(z_k, var_k, eps_k, softplus_k + var_eps, p_k) of component k on the tile; p_k is the softmax
    over k of pi_logit given its maximum m and denominator den (``_pi_max``)."""
    mu = tl.load(mu_ptr + k * BC + offs, mask=mask, other=0.0).to(tl.float32)
    raw = tl.load(raw_ptr + k * BC + offs, mask=mask, other=0.0).to(tl.float32)
    sp = _softplus(raw) + var_eps
    var = tl.clamp(sp, var_floor, var_ceiling, propagate_nan=tl.PropagateNan.ALL)
    eps = sample_noise(noise_ptr, seed, k, offs, mask, BC, MODE)
    p = tl.exp(tl.load(pi_ptr + k * BC + offs, mask=mask, other=0.0).to(tl.float32) - m) / den
    return mu + eps * tl.sqrt(var), var, eps, sp, p


@triton.jit
def _pi_max(pi_ptr, offs, mask, BC, K, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    m = tl.full((BLOCK_B, BLOCK_C), float("-inf"), dtype=tl.float32)
    for k in range(K):
        m = tl.maximum(m, tl.load(pi_ptr + k * BC + offs, mask=mask, other=0.0).to(tl.float32))
    den = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for k in range(K):
        den += tl.exp(tl.load(pi_ptr + k * BC + offs, mask=mask, other=0.0).to(tl.float32) - m)
    return m, den


@triton.jit
def _fwd_kernel(mu_ptr, raw_ptr, pi_ptr, tau_ptr, noise_ptr, pred_ptr, alea_ptr, seed, B, C, K,
                var_eps, var_floor, var_ceiling,
                MODE: tl.constexpr, SOFTMAX: tl.constexpr, UNCERTAINTY: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    offs, mask, col_ok = class_tile(B, C, BLOCK_B, BLOCK_C)
    BC = B * C
    inv_tau = 1.0 / tl.maximum(tl.load(tau_ptr).to(tl.float32), 1e-3, propagate_nan=tl.PropagateNan.ALL)
    m, den = _pi_max(pi_ptr, offs, mask, BC, K, BLOCK_B, BLOCK_C)
    pred = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    alea = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for k in range(K):
        z, var, eps, sp, p = _component(mu_ptr, raw_ptr, pi_ptr, noise_ptr, seed, k, offs, mask, BC, m, den,
                                        var_eps, var_floor, var_ceiling, MODE)
        pred += p * activation(z * inv_tau, col_ok, SOFTMAX)
        if UNCERTAINTY:
            alea += p / (1.0 + var) - p * tl.log(tl.maximum(p, 1e-9))
    tl.store(pred_ptr + offs, pred.to(pred_ptr.dtype.element_ty), mask=mask)
    if UNCERTAINTY:
        tl.store(alea_ptr + offs, alea.to(alea_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_pi(gpred, galea, a, p, var, HAS_GALEA: tl.constexpr):
    """dL/dp_k: through the prediction (a_k) and, if asked, the aleatoric term."""
    gp = gpred * a
    if HAS_GALEA:
        pc = tl.maximum(p, 1e-9)
        gp += galea * (1.0 / (1.0 + var) - tl.log(pc) - tl.where(p >= 1e-9, p / pc, 0.0))
    return gp


@triton.jit
def _bwd_kernel(gpred_ptr, galea_ptr, mu_ptr, raw_ptr, pi_ptr, tau_ptr, noise_ptr,
                dmu_ptr, draw_ptr, dpi_ptr, dtau_ptr, seed, B, C, K, var_eps, var_floor, var_ceiling,
                MODE: tl.constexpr, SOFTMAX: tl.constexpr, HAS_GALEA: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    offs, mask, col_ok = class_tile(B, C, BLOCK_B, BLOCK_C)
    BC = B * C
    tau = tl.load(tau_ptr).to(tl.float32)
    tau_c = tl.maximum(tau, 1e-3, propagate_nan=tl.PropagateNan.ALL)
    inv_tau = 1.0 / tau_c
    gpred = tl.load(gpred_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    galea = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    if HAS_GALEA:
        galea = tl.load(galea_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m, den = _pi_max(pi_ptr, offs, mask, BC, K, BLOCK_B, BLOCK_C)
    # Pass 1: sum_j p_j * dL/dp_j, needed by the softmax-over-k backward.
    weighted = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for k in range(K):
        z, var, eps, sp, p = _component(mu_ptr, raw_ptr, pi_ptr, noise_ptr, seed, k, offs, mask, BC, m, den,
                                        var_eps, var_floor, var_ceiling, MODE)
        weighted += p * _grad_pi(gpred, galea, activation(z * inv_tau, col_ok, SOFTMAX), p, var, HAS_GALEA)
    # Pass 2: every gradient.
    dtau = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for k in range(K):
        z, var, eps, sp, p = _component(mu_ptr, raw_ptr, pi_ptr, noise_ptr, seed, k, offs, mask, BC, m, den,
                                        var_eps, var_floor, var_ceiling, MODE)
        a = activation(z * inv_tau, col_ok, SOFTMAX)
        gp = _grad_pi(gpred, galea, a, p, var, HAS_GALEA)
        du = tl.where(mask, activation_backward(gpred * p, a, SOFTMAX), 0.0)
        dz = du * inv_tau
        dtau += du * (-z * inv_tau * inv_tau)
        dvar = dz * eps * 0.5 / tl.sqrt(var)
        if HAS_GALEA:
            dvar += galea * (-p / ((1.0 + var) * (1.0 + var)))
        raw = tl.load(raw_ptr + k * BC + offs, mask=mask, other=0.0).to(tl.float32)
        dsp = tl.where((sp >= var_floor) & (sp <= var_ceiling), dvar, 0.0)
        draw = tl.where(raw > 20.0, dsp, dsp * tl.sigmoid(raw))
        tl.store(dmu_ptr + k * BC + offs, dz.to(dmu_ptr.dtype.element_ty), mask=mask)
        tl.store(draw_ptr + k * BC + offs, draw.to(draw_ptr.dtype.element_ty), mask=mask)
        tl.store(dpi_ptr + k * BC + offs, (p * (gp - weighted)).to(dpi_ptr.dtype.element_ty), mask=mask)
    partial = tl.sum(tl.sum(dtau, axis=1), axis=0)
    tl.store(dtau_ptr + tl.program_id(0), tl.where(tau >= 1e-3, partial, 0.0))


def _mode(noise, seed) -> int:
    if noise is not None:
        return MODE_NOISE
    return MODE_EVAL if seed is None else MODE_SEED


def _blocks(C: int) -> tuple[int, int]:
    block_c = next_power_of_2(C)
    return max(1, min(64, 2048 // block_c)), block_c


def gmm_mixture_forward(mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor, var_ceiling, activation,
                        uncertainty):
    """mu, var_raw, pi_logit: [K, B, C]; tau: 0-dim or [1] -> (pred [B, C], aleatoric [B, C] or empty)."""
    check_gmm_mixture(mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor, var_ceiling, activation)
    mode = _mode(noise, seed)
    mu, var_raw, pi_logit = mu.contiguous(), var_raw.contiguous(), pi_logit.contiguous()
    K, B, C = mu.shape
    pred = mu.new_empty((B, C))
    alea = mu.new_empty((B, C) if uncertainty else (0,))
    if B == 0 or C == 0:
        return pred, alea
    if K == 0:
        pred.zero_()
        alea.zero_()
        return pred, alea
    block_b, block_c = _blocks(C)
    _fwd_kernel[(triton.cdiv(B, block_b),)](
        mu, var_raw, pi_logit, tau.reshape(1), noise.contiguous() if noise is not None else mu, pred,
        alea if uncertainty else pred, 0 if seed is None else int(seed), B, C, K,
        float(var_eps), float(var_floor), float(var_ceiling),
        MODE=mode, SOFTMAX=activation == "softmax", UNCERTAINTY=bool(uncertainty), BLOCK_B=block_b, BLOCK_C=block_c)
    return pred, alea


def gmm_mixture_backward(grad_pred, grad_aleatoric, mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor,
                         var_ceiling, activation):
    """Gradients (mu, var_raw, pi_logit, tau), regenerating the noise in seed mode."""
    check_gmm_mixture_backward(grad_pred, grad_aleatoric, mu, var_raw, pi_logit, tau, noise, seed, var_eps,
                               var_floor, var_ceiling, activation)
    mode = _mode(noise, seed)
    mu, var_raw, pi_logit = mu.contiguous(), var_raw.contiguous(), pi_logit.contiguous()
    K, B, C = mu.shape
    dmu, draw, dpi = torch.zeros_like(mu), torch.zeros_like(var_raw), torch.zeros_like(pi_logit)
    if B == 0 or C == 0 or K == 0:
        return dmu, draw, dpi, torch.zeros_like(tau)
    block_b, block_c = _blocks(C)
    grid = triton.cdiv(B, block_b)
    partial = torch.empty(grid, dtype=torch.float32, device=mu.device)
    has_galea = grad_aleatoric is not None and grad_aleatoric.numel() > 0
    _bwd_kernel[(grid,)](
        grad_pred.contiguous(), grad_aleatoric.contiguous() if has_galea else grad_pred, mu, var_raw, pi_logit,
        tau.reshape(1), noise.contiguous() if noise is not None else mu, dmu, draw, dpi, partial,
        0 if seed is None else int(seed), B, C, K, float(var_eps), float(var_floor), float(var_ceiling),
        MODE=mode, SOFTMAX=activation == "softmax", HAS_GALEA=has_galea, BLOCK_B=block_b, BLOCK_C=block_c)
    return dmu, draw, dpi, partial.sum().to(tau.dtype).reshape(tau.shape)
