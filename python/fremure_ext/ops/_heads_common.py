"""Argument checks shared by the relation-head op wrappers (gmm_mixture, bayes_mc)."""

from __future__ import annotations

import torch

from ._common import check_seed

ACTIVATIONS = ("sigmoid", "softmax")


def check_activation(activation: object) -> str:
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a str ('sigmoid' or 'softmax'), got {type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
    return activation


def check_noise_or_seed(noise: torch.Tensor | None, seed: object, ref: torch.Tensor, ref_name: str,
                        shape: tuple[int, ...], shape_doc: str) -> int | None:
    """Validates the two ways of passing the training noise; returns the seed as an int (or None)."""
    if noise is not None and seed is not None:
        raise ValueError("noise and seed are exclusive: pass the noise tensor or the seed, not both")
    if noise is not None:
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor or None, got {type(noise).__name__}")
        if noise.device != ref.device:
            raise ValueError(f"noise must be on {ref_name}'s device {ref.device}, got {noise.device}")
        if noise.dtype != ref.dtype:
            raise TypeError(f"noise must have {ref_name}'s dtype {ref.dtype}, got {noise.dtype}")
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise must have shape {shape_doc} = {tuple(shape)}, got {tuple(noise.shape)}")
    return None if seed is None else check_seed(seed)


def fake_check_devices(op: str, ref: torch.Tensor, ref_name: str, **others: torch.Tensor | None) -> None:
    """Device agreement inside fake (meta) kernels: a call mixing a meta tensor with real ones is
    dispatched to the fake kernel, which must reject it as the real kernel would."""
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(f"fremure.{op}: {name} must be on the same device as {ref_name} ({ref.device}), "
                               f"got {t.device}")
