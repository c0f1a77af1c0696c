"""Box geometry for building relation pairs at test time: centre-size boxes, union-box RoI
features, the detector's "+1" NMS per group and per-frame argmax.

Union boxes, spatial masks and the NMS itself live in :mod:`fremure.data.geometry` (shared with
the entry builder and the detector): ``pair_box_masks`` in [0, 1] (the published
``draw_union_boxes``), ``spatial_masks`` = that minus 0.5 (the model input).
"""

from __future__ import annotations

import torch

from fremure.data.geometry import MASK_SIZE, nms_plus1, union_boxes

UNION_POOL = (7, 7)
FEATURE_STRIDE = 16

__all__ = ["MASK_SIZE", "UNION_POOL", "FEATURE_STRIDE", "center_size", "grouped_nms", "segment_first_argmax",
           "union_boxes", "union_features"]


def center_size(boxes: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` xyxy -> ``[N, 4]`` (cx, cy, w, h) with the "+1" width ``w = x2 - x1 + 1``."""
    wh = boxes[:, 2:] - boxes[:, :2] + 1.0
    return torch.cat((boxes[:, :2] + 0.5 * wh, wh), 1)


def union_features(fmaps: torch.Tensor, union_box: torch.Tensor) -> torch.Tensor:
    """RoIAlign 7x7 at stride 16 (sampling ratio adaptive, not pixel-aligned) of the union boxes:
    fmaps ``[T, C, h, w]``, union_box ``[P, 5]`` (frame, xyxy in the scaled image) -> ``[P, C, 7, 7]``."""
    from torchvision.ops import roi_align  # optional dependency (the [detector] extra)

    return roi_align(fmaps, union_box.to(fmaps.dtype), UNION_POOL, 1.0 / FEATURE_STRIDE, 0, aligned=False)


def grouped_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS inside each group ("+1" IoU, suppress when IoU > threshold, as the published
    code's GPU kernel does, which produced its results; its CPU kernel suppresses at >=):
    boxes ``[N, 4]``, scores ``[N]``, groups int64 ``[N]``.

    Returns the int64 kept indices ordered by group, then by descending score (ties: index order).
    """
    keep = nms_plus1(boxes, scores, groups, threshold)
    return keep[torch.argsort(groups[keep], stable=True)]


def segment_first_argmax(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Index of the first maximum of ``values [N]`` inside each segment (``segment [N]`` ids);
    -1 for an empty segment. Equals ``torch.argmax`` of each segment's values on CPU."""
    best = torch.full((num_segments,), float("-inf"), dtype=values.dtype, device=values.device)
    best = best.scatter_reduce(0, segment, values, "amax")
    rows = torch.arange(values.shape[0], device=values.device)
    candidate = torch.where(values == best[segment], rows, values.shape[0])
    first = torch.full((num_segments,), values.shape[0], dtype=torch.long, device=values.device)
    first = first.scatter_reduce(0, segment, candidate, "amin")
    return torch.where(first < values.shape[0], first, -1)
