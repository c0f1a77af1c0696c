"""Box geometry shared by the entry builder (``fremure.data.features``), the detector and the
model's test-time pairing (``fremure.model.pairs``): union boxes, the 27x27 two-channel spatial
masks (docs/ag_and_eval.md 2.5), IoU and greedy NMS with the "+1" pixel convention.

All functions are vectorised over pairs/boxes. Only :func:`nms_plus1` needs torchvision (imported
when called), so reading cached entries works without it.
"""

from __future__ import annotations

import math

import torch

MASK_SIZE = 27


def union_boxes(boxes: torch.Tensor, pair_idx: torch.Tensor, im_idx: torch.Tensor) -> torch.Tensor:
    """Union box of every pair: ``[P, 5]`` = (im_idx, min x1, min y1, max x2, max y2).

    ``boxes [N, 4]`` xyxy (any unit), ``pair_idx [P, 2]`` int64 rows of (subject, object),
    ``im_idx [P]`` frame of each pair; the result has boxes' dtype.
    """
    subj, obj = boxes[pair_idx[:, 0]], boxes[pair_idx[:, 1]]
    return torch.cat([im_idx.to(boxes.dtype).unsqueeze(1),
                      torch.minimum(subj[:, :2], obj[:, :2]),
                      torch.maximum(subj[:, 2:], obj[:, 2:])], 1)


def pair_box_masks(pair_boxes: torch.Tensor, size: int = MASK_SIZE, guard_empty: bool = True) -> torch.Tensor:
    """Subject and object boxes rasterised inside their union box: float32 ``[P, 2, size, size]``
    in [0, 1] (the published ``draw_union_boxes``; :func:`spatial_masks` subtracts 0.5).

    ``pair_boxes`` ``[P, 8]`` = (subject xyxy, object xyxy), any consistent unit, computed in
    float32 as published; channel 0 = subject, 1 = object; row = y, column = x. Cell (j, k) is
    ``clip01(j+1-Y1) * clip01(Y2-j) * clip01(k+1-X1) * clip01(X2-k)`` with box edges mapped to
    ``(d * size) / W`` (W = union width, no +1). ``guard_empty``: a zero union width or height
    divides by 1 instead (the published code raises ZeroDivisionError there, docs/ag_and_eval.md Q-D7); False
    raises ZeroDivisionError as published.
    """
    if pair_boxes.dim() != 2 or pair_boxes.shape[1] != 8:
        raise ValueError(f"pair_boxes must be [P,8], got {tuple(pair_boxes.shape)}")
    pairs = pair_boxes.to(torch.float32).view(-1, 2, 4)
    lo = torch.minimum(pairs[:, 0, :2], pairs[:, 1, :2])                 # [P,2] (ux1, uy1)
    extent = torch.maximum(pairs[:, 0, 2:], pairs[:, 1, 2:]) - lo          # [P,2] (W, H)
    empty = extent == 0
    if guard_empty:
        extent = torch.where(empty, torch.ones_like(extent), extent)
    elif bool(empty.any()):
        raise ZeroDivisionError("a union box has zero width or height")
    start = (pairs[..., :2] - lo[:, None]) * size / extent[:, None]      # [P,2 boxes,2 axes]
    stop = (pairs[..., 2:] - lo[:, None]) * size / extent[:, None]
    grid = torch.arange(size, dtype=torch.float32, device=pairs.device)
    ramp = ((grid + 1) - start[..., None]).clamp(0, 1) * (stop[..., None] - grid).clamp(0, 1)  # [P,2,2,S]
    return ramp[:, :, 1, :, None] * ramp[:, :, 0, None, :]                # y ramp x x ramp


def spatial_masks(pair_boxes: torch.Tensor, size: int = MASK_SIZE) -> torch.Tensor:
    """The model's spatial-mask input: :func:`pair_box_masks` minus 0.5, float32
    ``[P, 2, size, size]`` in [-0.5, 0.5] (docs/ag_and_eval.md 2.5); zero-size unions are guarded."""
    return pair_box_masks(pair_boxes, size) - 0.5


def box_iou_plus1(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU with the "+1" pixel convention in float64 (docs/ag_and_eval.md 3.6): ``[n,4], [m,4] -> [n,m]``; 0
    where the boxes do not overlap."""
    a, b = boxes_a.to(torch.float64), boxes_b.to(torch.float64)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1]) + 1
    overlap = (iw > 0) & (ih > 0)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(overlap, inter / torch.where(overlap, union, torch.ones_like(union)), torch.zeros_like(inter))


def nms_plus1(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float,
              inclusive: bool = False) -> torch.Tensor:
    """Greedy NMS inside each group with "+1" IoU (torchvision ``batched_nms``).

    Args:
        boxes: ``[N, 4]`` xyxy; scores: ``[N]``; groups: int64 ``[N]`` (boxes of different groups
            never suppress each other).
        iou_threshold: a box is suppressed by a higher-scoring kept box of its group when their IoU
            is > threshold (the reference GPU kernel) or, with ``inclusive``, >= threshold (its
            CPU kernel).

    Returns:
        int64 kept indices in descending score order; equal scores are visited (and returned) in
        index order. IoUs are computed in float64 so that torchvision's per-group coordinate
        offsets stay exact; they differ from the reference's float32 kernel only at exact ties.
    """
    from torchvision.ops import batched_nms  # optional dependency (the [detector] extra)

    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    shifted = boxes[order].to(torch.float64)
    shifted[:, 2:] += 1.0   # torchvision's IoU of (x1, y1, x2 + 1, y2 + 1) is the "+1" IoU
    rank_score = -torch.arange(order.shape[0], dtype=torch.float64, device=boxes.device)
    # batched_nms suppresses IoU > t; for float64 IoUs, > nextafter(t, -inf) is >= t.
    threshold = math.nextafter(iou_threshold, -math.inf) if inclusive else iou_threshold
    kept = batched_nms(shifted, rank_score, groups[order], threshold)
    return order[kept.sort().values]
