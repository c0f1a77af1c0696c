"""Pure-PyTorch freq_gate_blend, written as the published FrequencyAwareTransformerEncoder does it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["freq_gate_blend"]


def freq_gate_blend(x: torch.Tensor, gate: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`fremure_ext.freq_gate_blend`: ``where(valid, g*LN0(x) + (1-g)*x, x)``.

    x: ``[..., D]``; gate: ``[D]`` or x's shape; valid: bool ``[...]`` or None.
    """
    blended = gate * F.layer_norm(x, (x.shape[-1],)) + (1.0 - gate) * x
    if valid is None:
        return blended
    return torch.where(valid.unsqueeze(-1), blended, x)
