"""Box geometry for building relation pairs: centre-size boxes, union boxes, the 27x27 two-channel
spatial masks (AG_AND_EVAL_SPEC.md 2.5), the detector's "+1" NMS and per-frame argmax.

All functions are vectorised over pairs/boxes.
"""

from __future__ import annotations

import torch

MASK_SIZE = 27
UNION_POOL = (7, 7)
FEATURE_STRIDE = 16


def center_size(boxes: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` xyxy -> ``[N, 4]`` (cx, cy, w, h) with the "+1" width ``w = x2 - x1 + 1``."""
    wh = boxes[:, 2:] - boxes[:, :2] + 1.0
    return torch.cat((boxes[:, :2] + 0.5 * wh, wh), 1)


def union_boxes(boxes: torch.Tensor, pair_idx: torch.Tensor, im_idx: torch.Tensor) -> torch.Tensor:
    """Union box of every pair: ``[P, 5]`` = (frame, min x1, min y1, max x2, max y2).

    boxes: ``[N, 4]`` xyxy (any unit); pair_idx: int64 ``[P, 2]`` rows of (subject, object);
    im_idx: ``[P]`` frame of each pair.
    """
    a, b = boxes[pair_idx[:, 0]], boxes[pair_idx[:, 1]]
    return torch.cat((im_idx.to(boxes.dtype)[:, None], torch.minimum(a[:, :2], b[:, :2]),
                      torch.maximum(a[:, 2:], b[:, 2:])), 1)


def spatial_masks(pair_boxes: torch.Tensor, size: int = MASK_SIZE, guard_empty: bool = True) -> torch.Tensor:
    """Rasterise subject and object boxes inside their union box: float32 ``[P, 2, size, size]``
    in [0, 1] (the published ``draw_union_boxes``; the model subtracts 0.5).

    pair_boxes: ``[P, 8]`` = subject xyxy, object xyxy; computed in float32 as published. Cell
    (j, k) of a box's channel is ``clip01(j + 1 - Y1) clip01(Y2 - j) clip01(k + 1 - X1) clip01(X2 - k)``
    with the box scaled to the union's ``size x size`` grid. ``guard_empty``: a zero-width/height
    union divides by 1 instead (the published code raises ZeroDivisionError there).
    """
    p = pair_boxes.to(torch.float32).reshape(-1, 2, 4)
    x1 = torch.minimum(p[:, 0, 0], p[:, 1, 0])
    y1 = torch.minimum(p[:, 0, 1], p[:, 1, 1])
    width = torch.maximum(p[:, 0, 2], p[:, 1, 2]) - x1
    height = torch.maximum(p[:, 0, 3], p[:, 1, 3]) - y1
    if guard_empty:
        width = torch.where(width == 0, torch.ones_like(width), width)
        height = torch.where(height == 0, torch.ones_like(height), height)
    elif bool((width == 0).any() | (height == 0).any()):
        raise ZeroDivisionError("a union box has zero width or height")
    x = (p[..., 0::2] - x1[:, None, None]) * size / width[:, None, None]    # [P, 2, 2]: X1, X2
    y = (p[..., 1::2] - y1[:, None, None]) * size / height[:, None, None]   # Y1, Y2
    grid = torch.arange(size, dtype=torch.float32, device=p.device)

    def ramp(low, high):  # [P, 2, size]
        return (grid + 1 - low[..., None]).clamp(0, 1) * (high[..., None] - grid).clamp(0, 1)

    return ramp(y[..., 0], y[..., 1])[..., :, None] * ramp(x[..., 0], x[..., 1])[..., None, :]


def union_features(fmaps: torch.Tensor, union_box: torch.Tensor) -> torch.Tensor:
    """RoIAlign 7x7 at stride 16 (sampling ratio adaptive, not pixel-aligned) of the union boxes:
    fmaps ``[T, C, h, w]``, union_box ``[P, 5]`` (frame, xyxy in the scaled image) -> ``[P, C, 7, 7]``."""
    from torchvision.ops import roi_align  # optional dependency (the [detector] extra)

    return roi_align(fmaps, union_box.to(fmaps.dtype), UNION_POOL, 1.0 / FEATURE_STRIDE, 0, aligned=False)


def pairwise_iou_plus_one(boxes: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``[N, N]`` with the "+1" pixel convention of the detector code."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, None] + area[None, :] - inter)


def grouped_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS inside each group ("+1" IoU, suppress when IoU >= threshold, as the published
    CPU kernel does).

    Returns the kept indices ordered by group, then by descending score.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(groups[by_score], stable=True)]
    ordered_groups = groups[order]
    overlap = pairwise_iou_plus_one(boxes[order].float()) >= threshold
    overlap &= ordered_groups[:, None] == ordered_groups[None, :]
    overlap = torch.triu(overlap, diagonal=1).cpu().numpy()
    removed = overlap[0] & False
    keep = []
    for i in range(order.shape[0]):
        if removed[i]:
            continue
        keep.append(i)
        removed |= overlap[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


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
