"""Shared fixtures of the training and CLI tests: feature caches of the bundled synthetic AG sample
extracted once per process with a small random detector, and a small training configuration."""

from __future__ import annotations

import functools
import os
import tempfile

import torch

from detector_fakes import small_detector
from fremure.data.detector import DetectorConfig
from fremure.data.synthetic import sample_path
from fremure.train.config import TrainConfig, make_config
from fremure.pipeline import extract_split

# 96 px is the sample's own frame height: no resizing, and RoI features of a 2-core CPU in seconds
SAMPLE_DETECTOR = DetectorConfig(target_size=96, chunk_size=4, rpn_post_nms_top_n=4)


@functools.lru_cache(maxsize=1)
def sample_caches() -> tuple[str, str, str]:
    """(data_path, train cache, test cache) of the bundled sample, PredCls, built once per process."""
    torch.set_num_threads(2)
    root = tempfile.mkdtemp(prefix="fremure-test-cache-")
    detector = small_detector(0, SAMPLE_DETECTOR)
    data = str(sample_path())
    train = extract_split(data, "train", "predcls", detector, os.path.join(root, "train"), progress=False)
    test = extract_split(data, "test", "predcls", detector, os.path.join(root, "test"), progress=False)
    return data, train.out_dir, test.out_dir


def small_config(save_path: str, **overrides) -> TrainConfig:
    """A quick configuration (1 decoder layer, no unused modules, few videos, no TensorBoard)."""
    data, train, test = sample_caches()
    base = dict(data_path=data, train_cache=train, test_cache=test, save_path=str(save_path), dec_layer=1,
                keep_unused=False, nepoch=1, max_train_videos=4, max_test_videos=2, lr=1e-4,
                progress=False, tensorboard=False, checkpoints="last", device="cpu")
    return make_config(base, overrides)
