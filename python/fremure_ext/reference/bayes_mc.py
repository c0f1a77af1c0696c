"""Pure-PyTorch bayes_mc, sampled one Monte-Carlo draw at a time as the published BayesianHead does."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .philox import philox_normal

__all__ = ["bayes_mc"]


def bayes_mc(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None, seed: int | None = None,
             samples: int = 6, activation: str = "sigmoid") -> torch.Tensor:
    """Reference of :func:`fremure_ext.bayes_mc`.

    mu, logvar: ``[B, C]``; noise: ``[S, B, C]`` (S = samples) or None; seed: int or None (noise
    ``philox_normal(seed, [S, B, C])``). Returns ``[B, C]``: the mean over S of
    ``act(mu + noise[s] * sqrt(exp(logvar)))`` in training, ``act(mu)`` when both are None.
    """
    if activation == "sigmoid":
        act = torch.sigmoid
    elif activation == "softmax":
        act = lambda z: F.softmax(z, dim=-1)  # noqa: E731
    else:
        raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
    if seed is not None:
        noise = philox_normal(seed, (samples, *mu.shape), dtype=mu.dtype, device=mu.device)
    if noise is None:
        return act(mu)
    var = torch.exp(logvar)
    draws = [act(mu + noise[s] * torch.sqrt(var)) for s in range(noise.shape[0])]
    return torch.stack(draws, dim=0).mean(dim=0)
