"""Non-finite tensor inputs of the torch.ops.fremure ops: one rule, and a check mode to find them.

The rule, for every op and every kernel (C++ CPU, CUDA, Triton, the reference): NaN and inf in a
tensor input are not errors. They propagate to the outputs that depend on them as they do through
the PyTorch functions the op replaces (the references are those functions; tests/test_nonfinite.py
compares where outputs and gradients are non-finite). Scalar options (temperature, scale, var_eps,
window, ...) are configuration: a non-finite or out-of-range one raises ValueError naming it.

To find where a NaN enters, run the code under :class:`check_finite`: the first ``torch.ops.fremure``
call (forward or backward) given NaN/inf in a floating tensor input raises ValueError naming the op
and the argument. Each checked tensor costs a reduction and a host sync, so it is a debugging mode,
like :func:`torch.autograd.detect_anomaly` (which names the backward function whose output went bad;
the two combine). The reference path (``use_kernels("reference")``) is plain PyTorch and not checked.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["check_finite"]


class check_finite(TorchDispatchMode):
    """Context manager: every ``torch.ops.fremure`` call in the block checks its floating tensor
    inputs and raises ``ValueError("fremure.<op>: <argument> contains NaN or inf (check_finite)")``.
    Thread-local, as every dispatch mode; backward calls made by autograd for the block's graph are
    checked when ``backward()`` runs inside the block."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "fremure":
            for name, value in _tensor_arguments(func, args, kwargs):
                _check(func, name, value)
        return func(*args, **kwargs)


def _tensor_arguments(func, args, kwargs):
    for i, argument in enumerate(func._schema.arguments):
        value = args[i] if i < len(args) else kwargs.get(argument.name)
        if isinstance(value, torch.Tensor):
            yield argument.name, value


def _check(func, name: str, value: torch.Tensor) -> None:
    if not value.is_floating_point() or value.numel() == 0 or value.device.type == "meta":
        return
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"fremure.{func._schema.name.split('::')[-1]}: {name} contains NaN or inf (check_finite)")
