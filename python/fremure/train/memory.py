"""TEMPURA relation memory rebuilt from streamed per-class sums (docs/method.md 3.6).

The reference writes every training video's pre-memory features to an .npy file and reads them
all back after the epoch. Here each video is folded into running sums as it is seen, so memory
use is ``[C, D]`` per relation type whatever the dataset size:

    w(pair, c) = 1 / (f_r[c] + 1e-6) for every labelled (pair, class c) of the video,
    a = softmax(w / temperature) over the video's labelled entries,
    sum[c] += sum of a * feature over the entries of class c; total[c] += sum of a,
    prototype[c] = sum[c] / total[c]   (0 for a class never seen).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..relations import RELATION_TYPES
from .losses import REL_GT

# Entry keys of the pre-memory features per type (the transformer's second output), as the
# published code saves `<type>_features` for the rebuild. With late fusion `<type>_mem_features`
# already has the memory mixed in.
FEATURE_KEYS = {r.name: f"{r.name}_features" for r in RELATION_TYPES}


class MemoryAccumulator:
    """Running per-class weighted sums of relation features; ``prototypes()`` gives the memory.

    ``frequencies``: ``{"attention": [3], "spatial": [6], "contacting": [17]}`` or None (w = 1).
    """

    def __init__(self, embed_dim: int, frequencies: Mapping[str, torch.Tensor] | None = None,
                 temperature: float = 0.5) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.frequencies = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in (frequencies or {}).items()}
        self.sums = {r: torch.zeros(c, embed_dim, dtype=torch.float64) for r, (_, _, c) in REL_GT.items()}
        self.totals = {r: torch.zeros(c, dtype=torch.float64) for r, (_, _, c) in REL_GT.items()}

    def add_video(self, entry: Mapping[str, Any]) -> None:
        """Folds one video's features ``[P, D]`` and GT lists (``*_gt``) into the sums."""
        for rel_type, (_, gt_key, classes) in REL_GT.items():
            key = FEATURE_KEYS[rel_type]
            if entry.get(key) is None:
                raise ValueError(f"entry has no pre-memory features for {rel_type} ({key!r})")
            features = entry[key].detach().double().cpu()
            lists = entry[gt_key]
            rows = torch.tensor([i for i, labels in enumerate(lists) for _ in labels], dtype=torch.int64)
            cls = torch.tensor([c for labels in lists for c in labels], dtype=torch.int64)
            if rows.numel() == 0:
                continue
            freq = self.frequencies.get(rel_type)
            weight = 1.0 / (freq[cls].double() + 1e-6) if freq is not None else torch.ones(len(cls), dtype=torch.float64)
            weight = torch.softmax(weight / self.temperature, dim=0)
            self.sums[rel_type].index_add_(0, cls, features[rows] * weight[:, None])
            self.totals[rel_type].index_add_(0, cls, weight)

    def prototypes(self) -> dict[str, torch.Tensor]:
        """float32 ``{"attention": [3, D], "spatial": [6, D], "contacting": [17, D]}``."""
        return {r: (self.sums[r] / self.totals[r].clamp(min=1e-300)[:, None]).float() for r in self.sums}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Flat tensors (for all-reduce or a checkpoint)."""
        out = {f"sum.{r}": t for r, t in self.sums.items()}
        out.update({f"total.{r}": t for r, t in self.totals.items()})
        return out
