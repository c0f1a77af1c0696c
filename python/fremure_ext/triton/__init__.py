"""Triton GPU kernels of the fremure ops (one module per op).

Each module defines launchers taking CUDA tensors; on import with a CUDA device and Triton present,
``register_all()`` installs them as the CUDA implementation of their ``torch.ops.fremure`` schemas, so
torch.compile sees ordinary custom ops. Tests run the same launchers on CPU tensors under
``TRITON_INTERPRET=1`` (Triton's interpreter), which is how they are proven without a GPU.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from ..registry import OPS

AVAILABLE = importlib.util.find_spec("triton") is not None


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= max(n, 1) (Triton block sizes must be powers of two)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def register_all() -> list[str]:
    """Installs the launchers ``<op>_forward`` / ``<op>_backward`` of each op with ``triton=True`` in
    fremure_ext.registry as the CUDA kernels of the op and its backward; returns the ops registered.
    Called by ``fremure_ext`` on import when a CUDA device and Triton are present."""
    done = []
    for op in (op for op in OPS if op.triton):
        module = importlib.import_module(f"{__name__}.{op.module}")
        for schema, launcher in ((op.name, "forward"), (op.backward, "backward")):
            torch.library.register_kernel(f"fremure::{schema}", "cuda", getattr(module, f"{op.name}_{launcher}"))
        done.append(op.name)
    return done
