"""From an AG folder to a trained model: the trainer over the feature caches, the training run, and
``train(config)``, everything ``fremure train`` does (run folder, resume, devices, torchrun)
(loading, building, predicting and evaluating: :mod:`fremure.pipeline`)."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Mapping

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


logger = logging.getLogger(__name__)


def resumed_config(config: TrainConfig, given: Mapping[str, Any]) -> TrainConfig:
    """The configuration a ``--resume`` runs with: the checkpoint's (``<save_path>/checkpoints/last.json``)
    with the ``given`` options on top, which may change only what :data:`run_folder.RESUME_CHANGEABLE`
    allows (ValueError naming the others)."""
    from . import run_folder
    from .config import make_config
    saved = run_folder.saved_config(config.save_path)
    resumed = make_config(saved, given)
    run_folder.check_resume(saved, resumed.to_dict())
    return resumed


def tensorboard_available(config: TrainConfig, asked: bool) -> TrainConfig:
    """``config`` without TensorBoard scalars when the tensorboard package is missing (a warning);
    ImportError when ``asked`` for explicitly."""
    if not config.tensorboard:
        return config
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        if asked:
            raise ImportError("--tensorboard true needs the tensorboard package: pip install 'fremure[tensorboard]'") \
                from None
        logger.warning("TensorBoard scalars off: tensorboard is not installed (pip install 'fremure[tensorboard]'); "
                       "history.jsonl and train.log still record every epoch")
        return dataclasses.replace(config, tensorboard=False)
    return config


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, command: str = "fremure train",
          ) -> tuple[Trainer, list[dict[str, Any]]]:
    """What ``fremure train`` does, under torchrun too: refuses a ``save_path`` holding a run unless
    ``overwrite`` (or ``resume``: ``config`` must then be :func:`resumed_config`'s), joins the process
    group, writes the run folder (train.log; config.yaml once ready) on rank 0, trains; returns
    (trainer, history)."""
    import torch
    from . import distributed as dist_utils
    from . import run_folder
    from .config import describe_device, resolve_device
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if not resume:
        run_folder.prepare_new_run(config.save_path, overwrite=overwrite and int(os.environ.get("RANK", "0")) == 0)
    device = resolve_device(config.device)
    if dist_utils.init_from_env(device) and device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    auto = config.device == "auto"
    config = dataclasses.replace(config, device=device)
    handler = run_folder.open_log(config.save_path) if dist_utils.rank() == 0 else None
    try:
        if handler is not None:
            logger.info("run folder %s: %s", config.save_path, command)
            logger.info("device: %s%s", describe_device(device), " (--device auto)" if auto else "")
        ready = (lambda trainer: run_folder.write_config_yaml(trainer.config, command)) if handler else None
        return run_training(config, resume=resume, on_ready=ready)
    finally:
        dist_utils.destroy()
        if handler is not None:
            run_folder.close_log(handler)
