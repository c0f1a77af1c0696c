"""@triton.jit helpers shared by the kernels over [B, C] class scores (bayes_mc, gmm_mixture): a
program owns whole rows of C classes, so the softmax over C stays in registers."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def class_tile(B, C, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """(offs, mask, col_ok) of this program's [BLOCK_B, BLOCK_C] tile of a contiguous [B, C] array."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_C)
    col_ok = (cols < C)[None, :]
    return rows[:, None] * C + cols[None, :], (rows < B)[:, None] & col_ok, col_ok


@triton.jit
def activation(z, col_ok, SOFTMAX: tl.constexpr):
    """Softmax over the valid classes of each row, or the elementwise sigmoid."""
    if SOFTMAX:
        z = tl.where(col_ok, z, float("-inf"))
        e = tl.exp(z - tl.max(z, axis=1)[:, None])
        e = tl.where(col_ok, e, 0.0)
        return e / tl.sum(e, axis=1)[:, None]
    return tl.sigmoid(z)


@triton.jit
def activation_backward(dy, a, SOFTMAX: tl.constexpr):
    """Gradient at the input of ``activation`` from its output a and the output gradient dy."""
    if SOFTMAX:
        return a * (dy - tl.sum(dy * a, axis=1)[:, None])
    return dy * a * (1.0 - a)


@triton.jit
def sample_noise(noise_ptr, seed, s, offs, mask, BC, MODE: tl.constexpr):
    """Standard-normal noise of sample s: read (MODE 1), Philox at counter s * BC + offs (MODE 2), else 0."""
    if MODE == 1:
        return tl.load(noise_ptr + s * BC + offs, mask=mask, other=0.0).to(tl.float32)
    if MODE == 2:
        return tl.randn(seed, s * BC + offs)
    return tl.zeros(offs.shape, dtype=tl.float32)
