"""Input checks shared by the op wrappers and by the paths with no C++ kernel in front of them.

Public wrappers check Python types only (:func:`check_tensor`, :func:`check_float`,
:func:`check_seed`); device, dtype, shape and value checks belong to the compiled kernels
(``csrc/common/checks.h``). The fake kernels, the Triton launchers and the reference fallback run
each op's one Python check function (``check_<op>`` next to its fake kernel) instead, built from
:func:`check_like` and :func:`check_shape`.
Errors name the argument: TypeError for a wrong type or dtype, ValueError else, as in C++.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(t: object, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_float(t: object, name: str) -> torch.Tensor:
    t = check_tensor(t, name)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float32/float64/float16/bfloat16), got {t.dtype}")
    return t


def check_like(ref: torch.Tensor, ref_name: str, t: torch.Tensor | None, name: str, dtype: bool = True,
               shape: bool = False) -> None:
    """``t`` (skipped when None) is on ``ref``'s device and, as asked, of its dtype and shape."""
    if t is None:
        return
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")
    if dtype and t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
    if shape and t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")


def check_shape(ok: bool, name: str, expected: str, t: torch.Tensor) -> None:
    """Raises ValueError "``name`` must be ``expected``, got shape ..." unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} must be {expected}, got shape {tuple(t.shape)}")


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def check_seed(seed: object):
    """A Philox seed: a Python int within int64, or a SymInt under torch.compile (returned as is)."""
    if isinstance(seed, torch.SymInt):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not _INT64_MIN <= seed <= _INT64_MAX:
        raise ValueError(f"seed must fit in int64, got {seed}")
    return seed


def check_number(value: object, name: str, kinds: tuple = (int, float)) -> None:
    """A Python number argument (bool excluded); ``kinds=(int, torch.SymInt)`` for an integer."""
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {'an int' if float not in kinds else 'a float'}, got {type(value).__name__}")

