"""Triton GPU kernels of the fremure ops (one module per op).

Each module defines launchers taking CUDA tensors; on import with a CUDA device and Triton present,
``register()`` installs them as the CUDA implementation of their ``torch.ops.fremure`` schemas, so
torch.compile sees ordinary custom ops. Tests run the same launchers on CPU tensors under
``TRITON_INTERPRET=1`` (Triton's interpreter), which is how they are proven without a GPU.
"""

from __future__ import annotations

import importlib.util

AVAILABLE = importlib.util.find_spec("triton") is not None


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= max(n, 1) (Triton block sizes must be powers of two)."""
    return 1 << max(int(n) - 1, 0).bit_length()


# Ops whose CUDA implementation is a Triton kernel (op catalogue: docs/ops.md).
TRITON_OPS = ["bayes_mc", "gated_fusion", "gmm_mixture", "segment_attention"]


def register_all() -> list[str]:
    """Registers every Triton launcher as its op's CUDA kernel; returns the ops registered.

    Called by ``fremure_ext`` on import when a CUDA device and Triton are present.
    """
    import importlib

    done = []
    for name in TRITON_OPS:
        importlib.import_module(f"{__name__}.{name}").register()
        done.append(name)
    return done
