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


def _binary_cross_entropy(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean BCE of probabilities ``probs`` against ``target``; NaN when ``probs`` holds a NaN or inf.

    F.binary_cross_entropy refuses NaN (an error on the CPU, a device assert on CUDA); testing for
    it first would read the data on the host (a GPU sync, a graph break under torch.compile), so the
    NaN is replaced for the kernel and brought back by ``0 * sum(probs)``, which adds an exact 0
    to a finite loss."""
    safe = probs.nan_to_num(nan=0.5).clamp(0.0, 1.0)
    return F.binary_cross_entropy(safe, target) + 0.0 * probs.sum()


def relation_targets(entry: dict[str, Any], mode: str, spatial_loss: str = "bce",
                     device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The label tensors of one video's training ``entry``, from its per-pair label lists.

    Keys: ``attention`` (int64 ``[P]``), ``spatial`` / ``contacting`` (float32 multi-hot ``[P, C]``
    with "bce", int64 margin targets with "mlm") and, in sgcls/sgdet, ``object`` (int64 ``[N]``).
    Built apart from the loss arithmetic so that a compiled step traces no Python label lists."""
    if spatial_loss not in SPATIAL_LOSSES:
        raise ValueError(f"spatial_loss must be one of {SPATIAL_LOSSES}, got {spatial_loss!r}")
    targets = {"attention": attention_labels(entry, device)}
    build = multi_hot if spatial_loss == "bce" else margin_targets
    for rel_type in ("spatial", "contacting"):
        _, gt_key, classes = REL_GT[rel_type]
        targets[rel_type] = build(entry[gt_key], classes, device)
    if mode != "predcls":
        targets["object"] = entry["labels"].long().to(device)
    return targets


def losses_from_targets(pred: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], mode: str,
                        rel_head: str = "bayesian", obj_head: str = "linear", spatial_loss: str = "bce",
                        eos_coef: float = 1.0) -> dict[str, torch.Tensor]:
    """Loss terms (float32 scalars) of the model's outputs ``pred`` against :func:`relation_targets`.

    Tensor arithmetic only: no host synchronisation, so it can run inside a compiled step. A NaN
    or inf in a distribution gives a NaN term (the trainer then skips the video)."""
    if spatial_loss not in SPATIAL_LOSSES:
        raise ValueError(f"spatial_loss must be one of {SPATIAL_LOSSES}, got {spatial_loss!r}")
    attention = pred["attention_distribution"].float()
    losses = {}
    if rel_head == "gmm":
        losses["attention_relation_loss"] = F.nll_loss(torch.log(attention + 1e-12), targets["attention"])
    else:
        losses["attention_relation_loss"] = F.cross_entropy(attention, targets["attention"])
    for rel_type, name in (("spatial", "spatial_relation_loss"), ("contacting", "contact_relation_loss")):
        probs = pred[REL_GT[rel_type][0]].float()
        if spatial_loss == "bce":
            losses[name] = _binary_cross_entropy(probs, targets[rel_type])
        else:
            losses[name] = F.multilabel_margin_loss(probs, targets[rel_type])
    if mode != "predcls":
        distribution = pred["distribution"].float()
        weight = torch.ones(distribution.shape[1], device=distribution.device)
        weight[0] = eos_coef
        if obj_head == "gmm":
            losses["object_loss"] = F.nll_loss(torch.log(distribution + 1e-12), targets["object"], weight=weight)
        else:
            losses["object_loss"] = F.cross_entropy(distribution, targets["object"], weight=weight)
    return losses


def relation_losses(entry: dict[str, Any], mode: str, rel_head: str = "bayesian", obj_head: str = "linear",
                    spatial_loss: str = "bce", eos_coef: float = 1.0) -> dict[str, torch.Tensor]:
    """Loss terms (float32 scalars) of one video's training ``entry`` after the model's forward.

    Keys: ``attention_relation_loss``, ``spatial_relation_loss``, ``contact_relation_loss`` and,
    in sgcls/sgdet, ``object_loss``. ``spatial_loss``: "bce" (default) or "mlm".
    """
    targets = relation_targets(entry, mode, spatial_loss, entry["attention_distribution"].device)
    return losses_from_targets(entry, targets, mode, rel_head, obj_head, spatial_loss, eos_coef)
