"""fremure_ext: the torch.ops.fremure custom ops (C++ CPU kernels, CUDA / Triton GPU kernels,
autograd, fake kernels) and their pure-PyTorch references.

    import fremure_ext
    y = fremure_ext.freq_gate_blend(x, gate)          # == torch.ops.fremure.freq_gate_blend
    fremure_ext.reference.freq_gate_blend(x, gate)    # plain PyTorch, same numbers
    fremure_ext.build_info()                          # what was compiled
"""

from __future__ import annotations

from . import _loader
from ._loader import build_info
from . import ops, reference
from .ops import *  # noqa: F401,F403

import torch as _torch

from . import triton as _triton_kernels

# Triton kernels become the CUDA implementation of their ops only where they can run.
TRITON_REGISTERED: list[str] = (
    _triton_kernels.register_all() if _triton_kernels.AVAILABLE and _torch.cuda.is_available() else []
)

__version__ = build_info()["version"]
__all__ = ["build_info", "ops", "reference", *ops.__all__]
