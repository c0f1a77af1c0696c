"""Tiny Action-Genome-like inputs for the detector, feature and cache tests (no real AG data)."""

from __future__ import annotations

import functools
import os
import types

import numpy as np
import torch

from fremure.data.detector import AGFasterRCNN, DetectorConfig, randomize_detector_

# Small frames and few proposals keep ResNet-101 on CPU fast; scale = 48 / 48 = 1 keeps boxes in pixels.
FRAME_H, FRAME_W = 48, 64
SMALL_CONFIG = DetectorConfig(target_size=FRAME_H, chunk_size=2, rpn_post_nms_top_n=4)
FAVOURED = {1: 4.0, 5: 4.0, 8: 3.5}   # classifier biases so random weights still detect something


@functools.lru_cache(maxsize=2)
def small_detector(seed: int = 0, config: DetectorConfig = SMALL_CONFIG) -> AGFasterRCNN:
    """Random-weight detector whose classifier favours person, book and chair.

    Built once per process (ResNet-101 initialisation is the slow part); tests must not change it.
    """
    torch.set_num_threads(2)
    with torch.device("meta"):                 # skip torchvision's initialisation: every tensor is set below
        detector = AGFasterRCNN(config)
    detector = randomize_detector_(detector.to_empty(device="cpu"), seed)
    with torch.no_grad():
        for cls, bias in FAVOURED.items():
            detector.cls_score.bias[cls] = bias
    return detector


def obj(cls: int, box, att, spa, con) -> dict:
    """One visible object dict in the docs/ag_and_eval.md 1.8 format (bbox xyxy float64, relations as LongTensors)."""
    return {"class": cls, "bbox": np.asarray(box, dtype=np.float64),
            "attention_relationship": torch.tensor(att, dtype=torch.int64),
            "spatial_relationship": torch.tensor(spa, dtype=torch.int64),
            "contacting_relationship": torch.tensor(con, dtype=torch.int64),
            "metadata": {"tag": "fake", "set": "test"}, "visible": True}


def person(box, key: str) -> dict:
    return {"person_bbox": np.asarray([box], dtype=np.float32), "frame": key}


def random_video_gt(keys: list[str], rng: np.random.Generator) -> list[list[dict]]:
    """GT for the given frame keys: one person and 1-3 objects per frame, boxes inside the frame."""
    def box():
        x1, y1 = rng.uniform(0, FRAME_W - 12), rng.uniform(0, FRAME_H - 12)
        return [x1, y1, rng.uniform(x1 + 6, FRAME_W - 1), rng.uniform(y1 + 6, FRAME_H - 1)]

    video = []
    for key in keys:
        frame = [person(box(), key)]
        for _ in range(int(rng.integers(1, 4))):
            frame.append(obj(int(rng.integers(2, 37)), box(), [int(rng.integers(0, 3))],
                             sorted(rng.choice(6, size=int(rng.integers(0, 3)), replace=False).tolist()),
                             sorted(rng.choice(17, size=int(rng.integers(1, 3)), replace=False).tolist())))
        video.append(frame)
    return video


def fake_ag(root: str, videos: int = 2, frames: int = 3, seed: int = 0, split: str = "test") -> types.SimpleNamespace:
    """Write random PNG frames under ``root/frames/`` and return an AG-like dataset object."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    video_list, gt = [], []
    for v in range(videos):
        name = f"V{v:04d}.mp4"
        os.makedirs(os.path.join(root, "frames", name), exist_ok=True)
        keys = [f"{name}/{10 * t + 7:06d}.png" for t in range(frames)]
        for key in keys:
            pixels = rng.integers(0, 256, size=(FRAME_H, FRAME_W, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, "frames", key))
        video_list.append(keys)
        gt.append(random_video_gt(keys, rng))
    return types.SimpleNamespace(data_path=root + os.sep, video_list=video_list, gt_annotations=gt, mode=split)
