"""The one switch between the compiled torch.ops.fremure kernels and the pure-PyTorch references.

Every public wrapper in :mod:`fremure_ext.ops` asks :func:`compiled` after its input checks.
``"auto"`` (default): the compiled kernel where this build registered one for the input's device,
the :mod:`fremure_ext.reference` function otherwise; ``"ops"`` / ``"reference"`` force either.
Process default: ``FREMURE_KERNELS`` (read at import) or :func:`set_kernels`; inside a block:
``with fremure_ext.dispatch.use_kernels("reference"): ...``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

MODES = ("auto", "ops", "reference")
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}


def check_mode(mode: object) -> str:
    """Validates a kernel choice ("auto" | "ops" | "reference") and returns it."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"kernels must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode


_stack = [check_mode(os.environ.get("FREMURE_KERNELS", "auto"))]


def current() -> str:
    return _stack[-1]


def set_kernels(mode: str) -> None:
    """Sets the process default (what ``FREMURE_KERNELS`` set at import)."""
    _stack[0] = check_mode(mode)


@contextlib.contextmanager
def use_kernels(mode: str) -> Iterator[None]:
    """Runs the block with the kernel choice ``mode``; restores the previous one on exit."""
    _stack.append(check_mode(mode))
    try:
        yield
    finally:
        _stack.pop()


@torch.compiler.assume_constant_result
def has_kernel(op: str, device_type: str) -> bool:
    """Whether this build registered a kernel of ``fremure::<op>`` for ``device_type``."""
    key = _DISPATCH_KEYS.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"fremure::{op}", key)


def compiled(op: str, device: torch.device) -> bool:
    """True when ``op`` on ``device`` runs its compiled kernel, False for the reference."""
    mode = _stack[-1]
    if mode == "auto":
        return has_kernel(op, device.type)
    return mode == "ops"


__all__ = ["MODES", "check_mode", "compiled", "current", "has_kernel", "set_kernels", "use_kernels"]
