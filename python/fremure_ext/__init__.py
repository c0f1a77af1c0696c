"""fremure_ext: the torch.ops.fremure custom ops (C++ CPU kernels, CUDA / Triton GPU kernels,
autograd, fake kernels) and their pure-PyTorch references.

    import fremure_ext
    y = fremure_ext.freq_gate_blend(x, gate)          # == torch.ops.fremure.freq_gate_blend
    fremure_ext.reference.freq_gate_blend(x, gate)    # plain PyTorch, same numbers
    fremure_ext.build_info()                          # what was compiled
    python -m fremure_ext.info                        # what was built and what runs here
"""

from __future__ import annotations

# torch first, then the checked _C (see _loader).
import torch as _torch

from . import _loader
from ._loader import build_info
from . import ops, reference
from .finite import check_finite
from .ops import *  # noqa: F401,F403

from . import triton as _triton_kernels

# Triton kernels become the CUDA implementation of their ops only where they can run.
TRITON_REGISTERED: list[str] = \
    _triton_kernels.register_all() if _triton_kernels.AVAILABLE and _torch.cuda.is_available() else []

# The version compiled into _C (CMake reads it from python/fremure/_version.py, the one source).
__version__ = _loader.build_config.VERSION
__all__ = ["build_info", "check_finite", "ops", "reference", *ops.__all__]
