"""From an AG folder to a trained model: the trainer over the feature caches and the training run
(loading, building, predicting and evaluating: :mod:`fremure.pipeline`)."""

from __future__ import annotations

from typing import Any

from ..data.cache import VideoEntrySource
from ..pipeline import build_model, frequencies, load_split
from .config import TrainConfig
from .trainer import Trainer


def make_trainer(config: TrainConfig, detector=None) -> Trainer:
    """Trainer over ``config.train_cache`` / ``config.test_cache``; with ``detector`` the entries of
    videos missing from a cache (or all, without a cache) are computed on the fly."""
    if not config.data_path:
        raise ValueError("data_path (--data-path) is required for training")
    train_ds = load_split(config.data_path, "train", config.model.mode)
    test_ds = load_split(config.data_path, "test", config.model.mode)
    train_src = VideoEntrySource(train_ds, config.model.mode, True, detector=detector, cache=config.train_cache or None)
    test_src = VideoEntrySource(test_ds, config.model.mode, False, detector=detector, cache=config.test_cache or None)
    freqs = frequencies(config.model, train_ds, test_ds)
    model = build_model(config, train_ds.object_classes, freqs)
    return Trainer(config, model, train_src, test_src, test_ds.gt_annotations, freqs)


def run_training(config: TrainConfig, resume: bool = False, detector=None) -> tuple[Trainer, list[dict[str, Any]]]:
    """Builds the trainer from ``config`` and runs it; returns (trainer, history)."""
    trainer = make_trainer(config, detector)
    return trainer, trainer.fit(resume=resume)
