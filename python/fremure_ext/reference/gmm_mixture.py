"""Pure-PyTorch gmm_mixture, computed component by component as the published GMMHeadPlus does."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .philox import philox_normal

__all__ = ["gmm_mixture"]

_TAU_MIN = 1e-3   # the published head clamps its temperature with clamp_min(1e-3)
_LOG_EPS = 1e-9   # and clamps pi before the log of the entropy term


def _activation(name: str):
    if name == "sigmoid":
        return torch.sigmoid
    if name == "softmax":
        return lambda z: F.softmax(z, dim=-1)
    raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {name!r}")


def gmm_mixture(mu: torch.Tensor, var_raw: torch.Tensor, pi_logit: torch.Tensor, tau: torch.Tensor,
                noise: torch.Tensor | None = None, seed: int | None = None, var_eps: float = 1e-6,
                var_floor: float = 1e-3, var_ceiling: float = 5.0, activation: str = "sigmoid",
                uncertainty: bool = False):
    """Reference of :func:`fremure_ext.gmm_mixture`.

    mu, var_raw, pi_logit: ``[K, B, C]``; tau: 0-dim or ``[1]``; noise: ``[K, B, C]`` or None;
    seed: int or None (noise ``philox_normal(seed, [K, B, C])``). Returns pred ``[B, C]``, or
    ``(pred, aleatoric)`` when ``uncertainty``. Unlike the published head (which computes the
    uncertainty under no_grad) the aleatoric term here is differentiable, so it can serve as the
    gradient oracle of the op; detach it to get the published behaviour.
    """
    act = _activation(activation)
    k_count = mu.shape[0]
    if seed is not None:
        noise = philox_normal(seed, mu.shape, dtype=mu.dtype, device=mu.device)
    var_list = [(F.softplus(var_raw[k]) + var_eps).clamp(min=var_floor, max=var_ceiling) for k in range(k_count)]
    pi_norm = torch.softmax(torch.stack([pi_logit[k] for k in range(k_count)], dim=1), dim=1)  # [B, K, C]
    if noise is not None:
        comp_logits = [mu[k] + noise[k] * torch.sqrt(var_list[k]) for k in range(k_count)]
    else:
        comp_logits = [mu[k] for k in range(k_count)]
    t = tau.clamp_min(_TAU_MIN)
    comp_probs = [act(logit / t) for logit in comp_logits]
    pred = (pi_norm * torch.stack(comp_probs, dim=1)).sum(dim=1)
    if not uncertainty:
        return pred
    var_stack = torch.stack(var_list, dim=1)
    kappa = (pi_norm / (1.0 + var_stack)).sum(dim=1)
    entropy = (-(pi_norm * pi_norm.clamp_min(_LOG_EPS).log())).sum(dim=1)
    return pred, kappa + entropy
