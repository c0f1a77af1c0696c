"""fremure.data.geometry: the shared NMS (threshold inclusivity, tie order, groups) and mask conventions."""

from __future__ import annotations

import torch

from fremure.data.geometry import nms_plus1, pair_box_masks, spatial_masks
from fremure.model import pairs


def test_nms_threshold_inclusive_and_strict_at_an_exact_tie():
    # "+1" areas 100 and 200, intersection 100: IoU exactly 0.5.
    boxes = torch.tensor([[0.0, 0, 9, 9], [0.0, 0, 9, 19]])
    scores = torch.tensor([0.9, 0.8])
    groups = torch.zeros(2, dtype=torch.long)
    assert nms_plus1(boxes, scores, groups, 0.5).tolist() == [0, 1]
    assert nms_plus1(boxes, scores, groups, 0.5, inclusive=True).tolist() == [0]


def test_nms_equal_scores_visit_in_index_order_and_groups_are_separate():
    boxes = torch.tensor([[0.0, 0, 9, 9]] * 3 + [[50.0, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.7])
    assert nms_plus1(boxes, scores, torch.zeros(4, dtype=torch.long), 0.3).tolist() == [3, 0]
    groups = torch.tensor([1, 0, 1, 0])
    assert nms_plus1(boxes, scores, groups, 0.3).tolist() == [3, 0, 1]
    assert pairs.grouped_nms(boxes, scores, groups, 0.3).tolist() == [3, 1, 0]
    assert nms_plus1(boxes[:0], scores[:0], groups[:0], 0.3).tolist() == []


def test_mask_conventions():
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(5, 2, 2, generator=g) * 50
    pair_boxes = torch.cat([corner, corner + 1 + torch.rand(5, 2, 2, generator=g) * 30], 2).reshape(5, 8)
    raw = pair_box_masks(pair_boxes)
    assert raw.min() >= 0 and raw.max() <= 1 and raw.max() > 0.5
    assert not hasattr(pairs, "spatial_masks")  # one name per convention: pair_box_masks is [0, 1]
    assert torch.equal(spatial_masks(pair_boxes), raw - 0.5)
