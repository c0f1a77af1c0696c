"""Random PredCls entries with the shapes of real AG videos, for tests and benchmarks."""

from __future__ import annotations

from typing import Sequence

import torch

from .geometry import spatial_masks, union_boxes

PERSON = 1


def predcls_entry(pairs_per_frame: Sequence[int], seed: int = 0, num_obj_classes: int = 37,
                  image_size: tuple[int, int] = (480, 270), scale: float = 600 / 270) -> dict:
    """A PredCls ``entry`` (docs/ag_and_eval.md 2.6) of random features for one video.

    Frame f holds one person box and ``pairs_per_frame[f]`` object boxes (a frame with 0 pairs
    holds only the person); pairs are (person, object) in row order. Boxes are random inside
    ``image_size`` (original pixels); RoI features ``[N, 2048]`` (non-negative, as after ReLU),
    union features ``[P, 1024, 7, 7]`` and the true spatial masks of the boxes.
    """
    gen = torch.Generator().manual_seed(seed)
    frames, labels, boxes = [], [], []
    pair_idx, im_idx = [], []
    width, height = image_size
    for f, count in enumerate(pairs_per_frame):
        person = len(labels)
        labels.append(PERSON)
        frames += [f] * (count + 1)
        labels += torch.randint(2, num_obj_classes, (count,), generator=gen).tolist()
        for i in range(count):
            pair_idx.append([person, person + 1 + i])
            im_idx.append(float(f))
        corner = torch.rand(count + 1, 2, generator=gen) * torch.tensor([width * 0.7, height * 0.7])
        size = 10 + torch.rand(count + 1, 2, generator=gen) * torch.tensor([width * 0.3, height * 0.3])
        boxes.append(torch.cat([corner, corner + size], 1))
    box_xyxy = torch.cat(boxes)
    pair = torch.tensor(pair_idx, dtype=torch.long).view(-1, 2)
    im = torch.tensor(im_idx, dtype=torch.float32)
    n, p = box_xyxy.shape[0], pair.shape[0]
    union = union_boxes(box_xyxy * scale, pair, im)
    pair_boxes = torch.cat((box_xyxy[pair[:, 0]], box_xyxy[pair[:, 1]]), 1)
    return {"boxes": torch.cat([torch.tensor(frames, dtype=torch.float32)[:, None], box_xyxy], 1),
            "labels": torch.tensor(labels, dtype=torch.long), "scores": torch.ones(n), "im_idx": im, "pair_idx": pair,
            "human_idx": torch.tensor([[i] for i, lab in enumerate(labels) if lab == PERSON], dtype=torch.long),
            "features": torch.rand(n, 2048, generator=gen), "union_feat": torch.rand(p, 1024, 7, 7, generator=gen),
            "union_box": union, "spatial_masks": spatial_masks(pair_boxes)}
