"""Boundary checks shared by the public op wrappers: each error names the argument."""

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
        raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {t.dtype}")
    return t


def check_same(ref: torch.Tensor, ref_name: str, t: torch.Tensor, name: str, dtype: bool = True) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")
    if dtype and t.dtype != ref.dtype:
        raise TypeError(f"{name} must have {ref_name}'s dtype {ref.dtype}, got {t.dtype}")


def check_ndim(t: torch.Tensor, ndim: int, name: str, shape_doc: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {shape_doc} ({ndim} dimensions), got shape {tuple(t.shape)}")


def check_finite(t: torch.Tensor, name: str) -> None:
    """Rejects NaN/inf. Skipped while tracing (data-dependent) and on CUDA (would synchronise)."""
    if torch.compiler.is_compiling() or t.device.type != "cpu" or t.numel() == 0:
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")


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
