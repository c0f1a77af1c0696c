"""Pure-PyTorch Philox4x32-10 normal and uniform generators, equal to Triton's
``tl.randn(seed, offset)`` and ``tl.rand(seed, offset)``.

The seed modes of the random ops (gmm_mixture, bayes_mc) draw element ``i`` of their noise as
``tl.randn(seed, i)``. This module computes the same numbers with ordinary tensor arithmetic, so
the references can rebuild the noise a seeded kernel used and tests can compare the two modes.

Algorithm (triton/language/random.py): key = (seed & 0xffffffff, seed >> 32), counter =
(offset & 0xffffffff, offset >> 32, 0, 0); ten Philox rounds; the first two output words become
uniforms through ``uint_to_uniform_float`` and the first Box-Muller output is returned (float32).
``tl.rand`` is ``uint_to_uniform_float`` of the first output word alone (segment_attention's
dropout mask).
"""

from __future__ import annotations

import torch

__all__ = ["philox_normal", "philox_uniform", "philox_uint32x4"]

_MASK = 0xFFFFFFFF
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_INT32_TO_UNIT = 4.6566127342e-10  # largest scale with (2**31 - 1) * scale < 1 in float32
_TWO_PI = 6.283185307179586


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` for a 32-bit constant ``a`` and 32-bit words ``b``.

    The product is assembled from 16-bit halves so that no int64 intermediate overflows."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    b_lo, b_hi = b & 0xFFFF, b >> 16
    low = a_lo * b_lo
    mid = a_hi * b_lo + a_lo * b_hi + (low >> 16)  # < 2**34
    lo = ((mid & 0xFFFF) << 16) | (low & 0xFFFF)
    hi = a_hi * b_hi + (mid >> 16)
    return hi, lo


def philox_uint32x4(seed: int, offset: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of counter ``(offset_lo, offset_hi, 0, 0)`` under the 64-bit ``seed``.

    ``offset``: int64 tensor of non-negative counters. Returns four int64 tensors holding the
    unsigned 32-bit output words."""
    seed &= (1 << 64) - 1
    k0, k1 = seed & _MASK, seed >> 32
    c0 = offset & _MASK
    c1 = (offset >> 32) & _MASK
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK
        k1 = (k1 + _KEY_B) & _MASK
    return c0, c1, c2, c3


def _uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    # Reinterpret as int32, fold negatives with bitwise not, scale into [0, 1) in float32.
    folded = torch.where(x >= 2**31, _MASK - x, x)
    return folded.to(torch.float32) * torch.tensor(_INT32_TO_UNIT, dtype=torch.float32)


def philox_normal(seed: int, shape, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normals ``out.view(-1)[i] = tl.randn(seed, i)`` (computed in float32, then cast)."""
    shape = torch.Size(shape)
    offset = torch.arange(shape.numel(), dtype=torch.int64, device=device)
    i1, i2, _, _ = philox_uint32x4(int(seed), offset)
    u1 = torch.clamp_min(_uint_to_uniform(i1), torch.tensor(1.0e-7, dtype=torch.float32))
    u2 = _uint_to_uniform(i2)
    theta = torch.tensor(_TWO_PI, dtype=torch.float32) * u2
    radius = torch.sqrt(-2.0 * torch.log(u1))
    return (radius * torch.cos(theta)).reshape(shape).to(dtype)


def philox_uniform(seed: int, offset: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in [0, 1) equal to ``tl.rand(seed, offset)`` element by element.

    ``offset``: int64 tensor of non-negative Philox counters (any shape)."""
    word, _, _, _ = philox_uint32x4(int(seed), offset.to(torch.int64))
    return _uint_to_uniform(word)
