"""From an AG folder to a trained model: the trainer over the feature caches and the training run
(loading, building, predicting and evaluating: :mod:`fremure.pipeline`)."""

from __future__ import annotations

from typing import Any, Callable

from ..data.cache import VideoEntrySource
from ..pipeline import build_model, frequencies, load_split
from .config import TrainConfig
from .trainer import Trainer


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


def run_training(config: TrainConfig, resume: bool = False, detector=None,
                 on_ready: Callable[[Trainer], None] | None = None) -> tuple[Trainer, list[dict[str, Any]]]:
    """Builds the trainer from ``config`` and runs it; returns (trainer, history). ``on_ready`` is
    called once the trainer is built and, with ``resume``, restored: a failed resume never reaches it."""
    trainer = make_trainer(config, detector)
    if resume:
        trainer.restore()
    if on_ready is not None:
        on_ready(trainer)
    return trainer, trainer.fit()
