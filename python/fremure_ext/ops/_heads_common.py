"""Argument checks shared by the relation-head ops (gmm_mixture, bayes_mc)."""

from __future__ import annotations

import torch

from ._common import check_like, check_seed, check_shape, check_tensor

ACTIVATIONS = ("sigmoid", "softmax")


def check_head_types(noise: object, seed: object, activation: object) -> int | None:
    """The wrappers' type checks of the training noise, seed and activation; returns the seed."""
    if noise is not None:
        check_tensor(noise, "noise")
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a str ('sigmoid' or 'softmax'), got {type(activation).__name__}")
    return None if seed is None else check_seed(seed)


def check_head_args(mu: torch.Tensor, noise: torch.Tensor | None, seed, noise_shape: tuple, shape_doc: str,
                    activation: str) -> None:
    """noise: mu's device and dtype, ``noise_shape``, exclusive with seed; activation: a known name."""
    if noise is not None:
        check_like(mu, "mu", noise, "noise")
        check_shape(tuple(noise.shape) == tuple(noise_shape), "noise", f"{shape_doc} = {tuple(noise_shape)}", noise)
        if seed is not None:
            raise ValueError("noise and seed are exclusive: pass the noise tensor or the seed, not both")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
