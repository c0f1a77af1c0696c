"""Frames with boxes and the top-k predicted relations drawn on them (PNG via matplotlib)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..eval.classes import ATTENTION_PREDICATES, CONTACTING_PREDICATES, SPATIAL_PREDICATES


def top_relations(pred: dict[str, Any], pair: int, k: int) -> list[tuple[str, float]]:
    """The ``k`` highest-scoring predicates of one pair over the three relation types."""
    names = list(ATTENTION_PREDICATES) + list(SPATIAL_PREDICATES) + list(CONTACTING_PREDICATES)
    scores = torch.cat([pred["attention_distribution"][pair], pred["spatial_distribution"][pair],
                        pred["contacting_distribution"][pair]]).float()
    values, index = scores.topk(min(k, scores.numel()))
    return [(names[i], float(v)) for v, i in zip(values.tolist(), index.tolist())]


def draw_video(dataset, video: int, pred: dict[str, Any], out_dir: str, top_k: int = 3,
               max_frames: int = 8) -> list[str]:
    """Draws up to ``max_frames`` frames of ``dataset`` video ``video`` with the predicted boxes
    (``pred['boxes']`` [N, 5] frame + xyxy, labels ``pred['pred_labels']``) and, per pair, its
    ``top_k`` relations; returns the PNG paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    frames = dataset.frame_paths(video) if hasattr(dataset, "frame_paths") else []
    boxes, labels = pred["boxes"].detach().cpu(), pred["pred_labels"].detach().cpu()
    pairs, im_idx = pred["pair_idx"].detach().cpu(), pred["im_idx"].detach().cpu().long()
    classes = dataset.object_classes
    paths = []
    for f, frame_path in enumerate(frames[:max_frames]):
        image = np.asarray(Image.open(frame_path).convert("RGB"))
        fig, ax = plt.subplots(figsize=(image.shape[1] / 60 + 2, image.shape[0] / 60 + 1), dpi=100)
        ax.imshow(image)
        ax.set_axis_off()
        rows = (boxes[:, 0].long() == f).nonzero().view(-1).tolist()
        for r in rows:
            x1, y1, x2, y2 = boxes[r, 1:].tolist()
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", linewidth=1.5))
            ax.text(x1, y1, classes[int(labels[r])], color="black", fontsize=7, backgroundcolor="lime")
        lines = []
        for p in (im_idx == f).nonzero().view(-1).tolist():
            obj = classes[int(labels[pairs[p, 1]])]
            rels = ", ".join(f"{name} {score:.2f}" for name, score in top_relations(pred, p, top_k))
            lines.append(f"person -> {obj}: {rels}")
        ax.set_title("\n".join(lines) or "no pairs", fontsize=7, loc="left")
        path = os.path.join(out_dir, f"video{video:04d}_frame{f:03d}.png")
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
