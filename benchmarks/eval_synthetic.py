"""Synthetic Action Genome test split for the evaluator benchmark and cross-checks.

Each video has a pool of objects that appear in a random subset of frames (about 6 per frame), one
person box per frame, AG-like relation labels, and model-like predictions for every human-object
pair: softmax attention and sigmoid spatial/contacting probabilities biased towards the GT labels.
In sgcls some labels are wrong; in sgdet boxes are jittered (some below IoU 0.5), labels and scores
are noisy and false detections are added, so every code path of the evaluator is exercised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

WIDTH, HEIGHT = 480.0, 270.0


def _random_box(rng: np.random.Generator, min_side: float = 20.0) -> np.ndarray:
    w = rng.uniform(min_side, WIDTH / 2)
    h = rng.uniform(min_side, HEIGHT / 1.5)
    x1 = rng.uniform(0, WIDTH - w)
    y1 = rng.uniform(0, HEIGHT - h)
    return np.array([x1, y1, x1 + w, y1 + h])


def _jitter(rng: np.random.Generator, box: np.ndarray, scale: float) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    moved = box + rng.normal(0, scale, 4) * np.array([w, h, w, h])
    moved[[0, 2]] = np.sort(np.clip(moved[[0, 2]], 0, WIDTH - 1))
    moved[[1, 3]] = np.sort(np.clip(moved[[1, 3]], 0, HEIGHT - 1))
    moved[2:] = np.maximum(moved[2:], moved[:2] + 1)
    return moved


def _labels(rng: np.random.Generator, size: int, low: int, high: int) -> torch.Tensor:
    count = int(rng.integers(low, high + 1))
    return torch.from_numpy(np.sort(rng.choice(size, count, replace=False)).astype(np.int64))


def _gt_video(rng: np.random.Generator, num_frames: int, objects_per_frame: float) -> list[list[dict]]:
    pool_size = max(2, int(round(objects_per_frame * 1.4)))
    pool_classes = rng.integers(2, 37, pool_size)
    pool_boxes = [_random_box(rng) for _ in range(pool_size)]
    person = _random_box(rng, 60)
    video = []
    for f in range(num_frames):
        count = int(np.clip(rng.poisson(objects_per_frame), 1, pool_size))
        frame = [{"person_bbox": _jitter(rng, person, 0.02).astype(np.float32)[None, :],
                  "frame": f"SYN{f:04d}.mp4/{f:06d}.png"}]
        for o in np.sort(rng.choice(pool_size, count, replace=False)):
            frame.append({
                "class": int(pool_classes[o]),
                "bbox": _jitter(rng, pool_boxes[o], 0.02),
                "attention_relationship": torch.tensor([int(rng.integers(0, 3))]),
                "spatial_relationship": _labels(rng, 6, 1, 2),
                "contacting_relationship": _labels(rng, 17, 1, 2),
                "metadata": {"tag": "synthetic", "set": "test"},
                "visible": True,
            })
        video.append(frame)
    return video


def _distributions(rng: np.random.Generator, gt_objects: list[dict]) -> tuple[np.ndarray, ...]:
    """Model-like float32 probabilities for pairs whose GT objects are given (None = no GT)."""
    n = len(gt_objects)
    att = rng.normal(0, 1.0, (n, 3))
    spa = rng.normal(-1.5, 1.5, (n, 6))
    con = rng.normal(-2.0, 1.5, (n, 17))
    for i, obj in enumerate(gt_objects):
        if obj is None:
            continue
        att[i, obj["attention_relationship"].numpy()] += 1.5
        spa[i, obj["spatial_relationship"].numpy()] += 2.5
        con[i, obj["contacting_relationship"].numpy()] += 3.0
    att = np.exp(att - att.max(1, keepdims=True))
    att /= att.sum(1, keepdims=True)
    return (att.astype(np.float32), (1 / (1 + np.exp(-spa))).astype(np.float32),
            (1 / (1 + np.exp(-con))).astype(np.float32))


def _prediction(rng: np.random.Generator, video: list[list[dict]], mode: str) -> dict[str, Any]:
    boxes, labels, scores, pairs, im_idx, pair_gt = [], [], [], [], [], []
    for f, frame in enumerate(video):
        human = len(boxes)
        person = frame[0]["person_bbox"][0].astype(np.float64)
        boxes.append([f, *(_jitter(rng, person, 0.05) if mode == "sgdet" else person)])
        labels.append(1)
        scores.append(1.0 if mode == "predcls" else rng.uniform(0.5, 1.0))
        rows = [(obj, obj["class"]) for obj in frame[1:]]
        if mode == "sgdet":
            rows += [(None, int(rng.integers(2, 37))) for _ in range(int(rng.poisson(1.5)))]
        for obj, cls in rows:
            box = _random_box(rng) if obj is None else obj["bbox"]
            if mode == "sgdet" and obj is not None:
                box = _jitter(rng, box, rng.choice([0.03, 0.25], p=[0.8, 0.2]))
            if mode != "predcls" and rng.random() < 0.15:
                cls = int(rng.integers(2, 37))
            pairs.append([human, len(boxes)])
            im_idx.append(f)
            pair_gt.append(obj)
            boxes.append([f, *box])
            labels.append(cls)
            scores.append(1.0 if mode == "predcls" else rng.uniform(0.1, 1.0))
    att, spa, con = _distributions(rng, pair_gt)
    label_key, score_key = ("labels", "scores") if mode == "predcls" else ("pred_labels", "pred_scores")
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        label_key: torch.tensor(labels, dtype=torch.int64),
        score_key: torch.tensor(scores, dtype=torch.float32),
        "pair_idx": torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2),
        "im_idx": torch.tensor(im_idx, dtype=torch.float32),
        "attention_distribution": torch.from_numpy(att),
        "spatial_distribution": torch.from_numpy(spa),
        "contacting_distribution": torch.from_numpy(con),
    }


def make_split(num_videos: int, mode: str = "predcls", seed: int = 0, frames: tuple[int, int] = (3, 60),
               objects_per_frame: float = 6.0) -> list[tuple[list[list[dict]], dict[str, Any]]]:
    """A synthetic test split: ``[(gt_annotation, pred entry)]``, one per video.

    Args:
        num_videos: videos in the split.
        mode: 'predcls', 'sgcls' or 'sgdet' (decides the prediction fields and their noise).
        seed: RNG seed.
        frames: inclusive range of frames per video (AG test videos average about 32).
        objects_per_frame: mean visible objects per frame.
    """
    rng = np.random.default_rng(seed)
    split = []
    for _ in range(num_videos):
        video = _gt_video(rng, int(rng.integers(frames[0], frames[1] + 1)), objects_per_frame)
        split.append((video, _prediction(rng, video, mode)))
    return split
