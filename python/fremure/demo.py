"""The main job on the bundled synthetic AG sample (``fremure demo``): extract features once,
evaluate the untrained model, train, evaluate again; ``run_demo`` does it from a script.

The demo fits a 12-video synthetic set in minutes, not AG in days: a linear relation head without
memory or dropout, lr 3e-5 for 10 epochs (the published lr 1e-5 needs far more steps; at 1e-4 each
one-video step swings the output biases and recall oscillates), 1 decoder layer.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

from .train.config import TrainConfig

DEMO_DEFAULTS: dict[str, Any] = {
    "nepoch": 10, "lr": 3e-5, "checkpoints": "none", "tensorboard": False, "log_iter": 1000,
    "model": {"dec_layer": 1, "rel_head": "linear", "rel_mem_compute": "none", "dropout": 0.0, "keep_unused": False},
}


@dataclasses.dataclass
class DemoResult:
    """R@K / mR@K per constraint before (``untrained``) and after training (``results``), the
    per-epoch ``history`` and the wall time in ``seconds``; both results are also in ``work_dir``."""

    untrained: dict[str, Any]
    results: dict[str, Any]
    history: list[dict[str, Any]]
    work_dir: str
    seconds: float


def reuse_caches(config: TrainConfig) -> None:
    """Checks that ``config.train_cache`` and ``config.test_cache`` are complete feature caches
    (ValueError naming the flag otherwise)."""
    from .data.cache import FeatureCache
    for flag, cache in (("--train-cache", config.train_cache), ("--test-cache", config.test_cache)):
        if not os.path.isdir(cache):
            raise ValueError(f"{flag} {cache}: no such directory")
        missing = FeatureCache(cache).missing()
        if missing:
            raise ValueError(f"{flag} {cache} lacks {len(missing)} videos (e.g. {missing[0]})")


def extract_caches(config: TrainConfig, detector_checkpoint: str | None = None, target_size: int | None = 96,
                   proposals: int | None = 10) -> str:
    """Runs the detector (published weights, or random ones) once over both splits of
    ``config.data_path`` into ``config.train_cache`` / ``config.test_cache`` (a finished cache is
    reused); returns the detector's description."""
    from .pipeline import extract_split, make_detector
    detector, description = make_detector(detector_checkpoint, target_size, config.seed, config.device, proposals)
    for split, cache in (("train", config.train_cache), ("test", config.test_cache)):
        extract_split(config.data_path, split, config.model.mode, detector, cache, progress=config.progress)
    return description


def run_demo(config: TrainConfig, work_dir: str, *, given_caches: bool = False, detector_checkpoint: str | None = None,
             target_size: int | None = 96, proposals: int | None = 10,
             echo: Callable[[str], None] = print) -> DemoResult:
    """The demo with ``config`` (its data_path, caches and save_path already set): features
    (``given_caches``: ``config``'s caches are used as they are), the untrained model's recall,
    training, the trained model's recall; writes ``results.json`` and ``results_untrained.json``
    to ``work_dir``. ``echo`` receives the progress lines."""
    import torch
    from .eval import write_json
    from .pipeline import evaluate
    from .train.run import make_trainer
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    if given_caches:
        reuse_caches(config)
        echo(f"features: reusing {config.train_cache} and {config.test_cache}")
    else:
        echo(f"detector: {extract_caches(config, detector_checkpoint, target_size, proposals)}")
        echo(f"features extracted once into {work_dir} ({time.perf_counter() - started:.0f} s so far)")
    trainer = make_trainer(config)
    mode = config.model.mode
    untrained, _ = evaluate(trainer.model, trainer.test_source, trainer.test_gt, mode, trainer.num_test, config.device)
    echo(f"training: {config.nepoch} epochs over {trainer.num_train} videos, {config.model.rel_head} head, "
         f"lr {config.lr:g}, memory {config.model.rel_mem_compute}")
    history = trainer.fit()
    results, _ = evaluate(trainer.model, trainer.test_source, trainer.test_gt, mode, trainer.num_test, config.device)
    os.makedirs(work_dir, exist_ok=True)
    write_json(results, os.path.join(work_dir, "results.json"))
    write_json(untrained, os.path.join(work_dir, "results_untrained.json"))
    return DemoResult(untrained, results, history, work_dir, time.perf_counter() - started)


__all__ = ["DEMO_DEFAULTS", "DemoResult", "extract_caches", "reuse_caches", "run_demo"]
