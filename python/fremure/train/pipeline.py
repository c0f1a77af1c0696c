"""From an AG folder to a trained model: datasets, detector, feature caches, training run."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..data import ActionGenome
from ..data.cache import FeatureCache, VideoEntrySource, extract_features
from ..data.frequency import predicate_frequencies
from .config import TrainConfig
from .trainer import Trainer, build_model

SPLITS = ("train", "test")


def load_split(data_path: str | os.PathLike, split: str, mode: str) -> ActionGenome:
    """The AG split as the published scripts load it (filtersmall pickle for sgcls/sgdet)."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return ActionGenome(data_path, split, filter_small_box=mode != "predcls")


def make_detector(checkpoint: str | None = None, target_size: int | None = None, seed: int = 0,
                  device: str = "cpu", proposals: int | None = None):
    """AG Faster R-CNN from ``checkpoint`` (published faster_rcnn_ag.pth), or randomly initialised
    weights when None (features then carry no learned appearance). Returns (detector, description)."""
    from ..data.detector import AGFasterRCNN, DetectorConfig, load_ag_detector, randomize_detector_
    options = {}
    if target_size is not None:
        options["target_size"] = target_size
    if proposals is not None:
        options["rpn_post_nms_top_n"] = proposals
    config = DetectorConfig(**options)
    if checkpoint:
        detector = load_ag_detector(checkpoint, device=device)
        if options:
            import dataclasses
            detector.config = dataclasses.replace(detector.config, **options)
        return detector.eval(), f"AG Faster R-CNN from {checkpoint}"
    with torch.device("meta"):              # every tensor is set by randomize_detector_
        detector = AGFasterRCNN(config)
    detector = randomize_detector_(detector.to_empty(device="cpu"), seed).to(device).eval()
    return detector, f"randomly initialised detector (seed {seed}; no --detector-checkpoint given)"


def extract_split(data_path: str, split: str, mode: str, detector, out_dir: str, dtype: str = "float32",
                  progress: bool = True) -> FeatureCache:
    """Runs the detector once over a split into ``out_dir`` (resumes a partial cache)."""
    dataset = load_split(data_path, split, mode)
    return extract_features(dataset, detector, out_dir, mode, dtype=dtype, progress=progress,
                            training=split == "train")


def frequencies(config: TrainConfig, train: ActionGenome, test: ActionGenome | None) -> dict[str, torch.Tensor] | None:
    """Frequency priors per config (None with ``freq: false``; published pooling of train+test by default)."""
    if not config.freq:
        return None
    return predicate_frequencies(train, test, include_test=config.freq_include_test)


def make_trainer(config: TrainConfig, detector=None) -> Trainer:
    """Trainer over ``config.train_cache`` / ``config.test_cache``; with ``detector`` the entries of
    videos missing from a cache (or all, without a cache) are computed on the fly."""
    if not config.data_path:
        raise ValueError("data_path (--data-path) is required for training")
    train_ds = load_split(config.data_path, "train", config.mode)
    test_ds = load_split(config.data_path, "test", config.mode)
    train_src = VideoEntrySource(train_ds, config.mode, True, detector=detector, cache=config.train_cache or None)
    test_src = VideoEntrySource(test_ds, config.mode, False, detector=detector, cache=config.test_cache or None)
    freqs = frequencies(config, train_ds, test_ds)
    model = build_model(config, train_ds.object_classes, freqs)
    return Trainer(config, model, train_src, test_src, test_ds.gt_annotations, freqs)


def run_training(config: TrainConfig, resume: bool = False, detector=None) -> tuple[Trainer, list[dict[str, Any]]]:
    """Builds the trainer from ``config`` and runs it; returns (trainer, history)."""
    trainer = make_trainer(config, detector)
    return trainer, trainer.fit(resume=resume)
