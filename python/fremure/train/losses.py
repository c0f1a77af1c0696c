"""Training losses of FReMuRe (docs/ag_and_eval.md 4.1-4.2, docs/method.md 5).

Published recipe: attention cross-entropy on the head's output (for the Bayesian head these are
probabilities, Q-T3), spatial/contacting binary cross-entropy on the head's probabilities
(``multilabel margin`` as an option), object cross-entropy in SGCls/SGDet. Every term is the mean
over its elements; the total is their plain sum. Losses are computed in float32 even under AMP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..relations import RELATION_TYPES

REL_GT = {r.name: (f"{r.name}_distribution", f"{r.name}_gt", r.classes) for r in RELATION_TYPES}
SPATIAL_LOSSES = ("bce", "mlm")


def attention_labels(entry: dict[str, Any], device: torch.device) -> torch.Tensor:
    """int64 ``[P]``: the single attention label of every pair (``view(-1)``, so P == 1 works, Q-T6)."""
    lists = entry["attention_gt"]
    if any(len(labels) != 1 for labels in lists):
        raise ValueError("every pair needs exactly one attention label (docs/ag_and_eval.md Q-D4)")
    return torch.tensor([labels[0] for labels in lists], dtype=torch.int64, device=device).view(-1)


def multi_hot(lists: list[list[int]], num_classes: int, device: torch.device) -> torch.Tensor:
    """float32 ``[P, C]`` multi-hot targets from per-pair label lists."""
    target = torch.zeros(len(lists), num_classes, device=device)
    rows = [i for i, labels in enumerate(lists) for _ in labels]
    cols = [c for labels in lists for c in labels]
    if rows:
        target[rows, cols] = 1.0
    return target


def margin_targets(lists: list[list[int]], num_classes: int, device: torch.device) -> torch.Tensor:
    """int64 ``[P, C]`` multi-label-margin targets: the labels in list order, then -1."""
    target = torch.full((len(lists), num_classes), -1, dtype=torch.int64, device=device)
    for i, labels in enumerate(lists):
        target[i, :len(labels)] = torch.as_tensor(labels, dtype=torch.int64)
    return target


def relation_losses(entry: dict[str, Any], mode: str, rel_head: str = "bayesian", obj_head: str = "linear",
                    spatial_loss: str = "bce", eos_coef: float = 1.0) -> dict[str, torch.Tensor]:
    """Loss terms (float32 scalars) of one video's training ``entry`` after the model's forward.

    Keys: ``attention_relation_loss``, ``spatial_relation_loss``, ``contact_relation_loss`` and,
    in sgcls/sgdet, ``object_loss``. ``spatial_loss``: "bce" (default) or "mlm".
    """
    if spatial_loss not in SPATIAL_LOSSES:
        raise ValueError(f"spatial_loss must be one of {SPATIAL_LOSSES}, got {spatial_loss!r}")
    attention = entry["attention_distribution"].float()
    device = attention.device
    losses = {}
    labels = attention_labels(entry, device)
    if rel_head == "gmm":
        losses["attention_relation_loss"] = F.nll_loss(torch.log(attention + 1e-12), labels)
    else:
        losses["attention_relation_loss"] = F.cross_entropy(attention, labels)
    for rel_type, name in (("spatial", "spatial_relation_loss"), ("contacting", "contact_relation_loss")):
        key, gt_key, classes = REL_GT[rel_type]
        probs = entry[key].float()
        if not bool(torch.isfinite(probs).all()):     # BCE refuses NaN inputs: report a NaN loss instead
            losses[name] = probs.sum() * float("nan")
        elif spatial_loss == "bce":
            losses[name] = F.binary_cross_entropy(probs.clamp(0.0, 1.0), multi_hot(entry[gt_key], classes, device))
        else:
            losses[name] = F.multilabel_margin_loss(probs, margin_targets(entry[gt_key], classes, device))
    if mode != "predcls":
        distribution = entry["distribution"].float()
        weight = torch.ones(distribution.shape[1], device=device)
        weight[0] = eos_coef
        target = entry["labels"].long()
        if obj_head == "gmm":
            losses["object_loss"] = F.nll_loss(torch.log(distribution + 1e-12), target, weight=weight)
        else:
            losses["object_loss"] = F.cross_entropy(distribution, target, weight=weight)
    return losses
