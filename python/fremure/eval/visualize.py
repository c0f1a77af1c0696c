"""Frames with boxes and the top-k predicted relations drawn on them (PNG via matplotlib)."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from .classes import ATTENTION_PREDICATES, CONTACTING_PREDICATES, SPATIAL_PREDICATES

DPI = 100


def top_relations(pred: dict[str, Any], pair: int, k: int) -> list[tuple[str, float]]:
    """The ``k`` highest-scoring predicates of one pair over the three relation types."""
    names = list(ATTENTION_PREDICATES) + list(SPATIAL_PREDICATES) + list(CONTACTING_PREDICATES)
    scores = torch.cat([pred["attention_distribution"][pair], pred["spatial_distribution"][pair],
                        pred["contacting_distribution"][pair]]).float()
    values, index = scores.topk(min(k, scores.numel()))
    return [(names[i], float(v)) for v, i in zip(values.tolist(), index.tolist())]


def auto_scale(height: int, min_height: int = 480) -> int:
    """Smallest integer factor that makes a frame of ``height`` pixels at least ``min_height`` tall."""
    if height <= 0:
        raise ValueError(f"height must be positive, got {height}")
    return max(1, math.ceil(min_height / height))


def draw_video(dataset, video: int, pred: dict[str, Any], out_dir: str, top_k: int = 3,
               max_frames: int = 8, scale: int = 0, min_height: int = 480) -> list[str]:
    """Draws up to ``max_frames`` frames of ``dataset`` video ``video`` with the predicted boxes
    (``pred['boxes']`` [N, 5] frame + xyxy in original-image pixels, labels ``pred['pred_labels']``)
    and, per pair, its ``top_k`` relations; returns the PNG paths.

    Each PNG is exactly the frame's size times ``scale`` (0: :func:`auto_scale` to ``min_height``), with the
    relations written over the top-left corner, so outputs of one video line up frame by frame.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from PIL import Image

    if scale < 0:
        raise ValueError(f"scale must be >= 0 (0 = automatic), got {scale}")
    os.makedirs(out_dir, exist_ok=True)
    frames = dataset.frame_paths(video)
    boxes, labels = pred["boxes"].detach().cpu(), pred["pred_labels"].detach().cpu()
    pairs, im_idx = pred["pair_idx"].detach().cpu(), pred["im_idx"].detach().cpu().long()
    classes = dataset.object_classes
    paths = []
    for f, frame_path in enumerate(frames[:max_frames]):
        image = np.asarray(Image.open(frame_path).convert("RGB"))
        height, width = image.shape[:2]
        factor = scale or auto_scale(height, min_height)
        figure = Figure(figsize=(width * factor / DPI, height * factor / DPI), dpi=DPI)
        FigureCanvasAgg(figure)
        ax = figure.add_axes((0, 0, 1, 1))
        ax.imshow(image, extent=(0, width, height, 0), interpolation="nearest")
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_axis_off()
        for r in (boxes[:, 0].long() == f).nonzero().view(-1).tolist():
            x1, y1, x2, y2 = boxes[r, 1:].tolist()
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", linewidth=1.5))
            ax.text(x1, y1, classes[int(labels[r])], color="black", fontsize=7, va="bottom",
                    bbox=dict(facecolor="lime", edgecolor="none", pad=1), clip_on=True)
        lines = []
        for p in (im_idx == f).nonzero().view(-1).tolist():
            obj = classes[int(labels[pairs[p, 1]])]
            rels = ", ".join(f"{name} {score:.2f}" for name, score in top_relations(pred, p, top_k))
            lines.append(f"person -> {obj}: {rels}")
        ax.text(0.01, 0.99, "\n".join(lines) or "no pairs", transform=ax.transAxes, fontsize=7, va="top",
                ha="left", color="white", bbox=dict(facecolor="black", alpha=0.55, edgecolor="none", pad=2))
        path = os.path.join(out_dir, f"video{video:04d}_frame{f:03d}.png")
        figure.savefig(path, dpi=DPI)
        paths.append(path)
    return paths
