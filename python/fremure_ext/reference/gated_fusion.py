"""Pure-PyTorch gated_fusion, computed the way the published transformer fuses its two local
branches (``fusion_gate_local``): normalise, concatenate, one Linear, sigmoid / T, clamp, lerp."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gated_fusion"]


def gated_fusion(head: torch.Tensor, tail: torch.Tensor, cond: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None, temperature: float = 1.5, lo: float = 0.02,
                 hi: float = 0.98) -> torch.Tensor:
    """Reference of :func:`fremure_ext.gated_fusion`.

    head, tail: ``[N, D]``; cond: ``[Dc]`` (broadcast to every row) or ``[N, Dc]``;
    weight: ``[D, 2D + Dc]``; bias: ``[D]`` or None.
    """
    h = F.layer_norm(head, (head.shape[-1],))
    t = F.layer_norm(tail, (tail.shape[-1],))
    if cond.dim() == 1:
        cond = cond.view(1, -1).expand(head.shape[0], -1)
    q = F.layer_norm(cond, (cond.shape[-1],))
    logits = F.linear(torch.cat([h, t, q], dim=-1), weight, bias)
    gate = torch.clamp(torch.sigmoid(logits / temperature), lo, hi)
    return h + (1 - gate) * (t - h)
