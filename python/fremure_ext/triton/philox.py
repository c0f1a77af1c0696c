"""Standard-normal noise exactly as the Triton kernels draw it in seed mode: element i of the
flattened [S, B, C] (or [K, B, C]) noise is ``tl.randn(seed, i)``; and ``tl.rand(seed, offset)``
uniforms at given counters (segment_attention's dropout mask)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _randn_kernel(out_ptr, seed, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.randn(seed, offs), mask=offs < n)


def philox_randn(seed: int, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 tensor of ``shape`` filled with tl.randn(seed, flat index) (CUDA, or CPU under
    TRITON_INTERPRET=1)."""
    out = torch.empty(shape, dtype=torch.float32, device=device)
    n = out.numel()
    if n:
        _randn_kernel[(triton.cdiv(n, 1024),)](out, int(seed), n, BLOCK=1024)
    return out


@triton.jit
def _rand_kernel(offset_ptr, out_ptr, seed, n, BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offset = tl.load(offset_ptr + idx, mask=idx < n, other=0)
    tl.store(out_ptr + idx, tl.rand(seed, offset), mask=idx < n)


def philox_rand(seed: int, offset: torch.Tensor) -> torch.Tensor:
    """float32 tensor shaped like the int64 ``offset`` holding tl.rand(seed, offset) (CUDA, or CPU
    under TRITON_INTERPRET=1). The seed is passed as its unsigned 64-bit pattern."""
    offset = offset.to(torch.int64).contiguous()
    out = torch.empty(offset.shape, dtype=torch.float32, device=offset.device)
    n = out.numel()
    if n:
        _rand_kernel[(triton.cdiv(n, 1024),)](offset, out, int(seed) & (2**64 - 1), n, BLOCK=1024)
    return out
