"""The main job on the bundled synthetic AG sample (``fremure demo``): extract features once,
evaluate the untrained model, train, evaluate again, and leave what ``fremure train`` and
``fremure eval`` leave (a run folder with config.yaml, train.log, history.jsonl and the best-mR@20
checkpoint, which ``fremure eval`` and ``fremure predict`` take; results.json and report.html);
``run_demo`` does it from a script.

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
    "nepoch": 10, "lr": 3e-5, "checkpoints": "best", "tensorboard": False, "log_iter": 1000,
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


def finished_demo(work_dir: str) -> bool:
    """Whether ``work_dir`` holds a finished demo (its results.json)."""
    return os.path.isfile(os.path.join(work_dir, "results.json"))


def run_demo(config: TrainConfig, work_dir: str, *, given_caches: bool = False, detector_checkpoint: str | None = None,
             target_size: int | None = 96, proposals: int | None = 10, overwrite: bool = False,
             echo: Callable[[str], None] = print) -> DemoResult:
    """The demo with ``config`` (its data_path, caches and save_path already set): features
    (``given_caches``: ``config``'s caches are used as they are; else extracted, a finished cache
    reused), the untrained model's recall, training into the run folder ``config.save_path``
    (config.yaml, train.log, history.jsonl, checkpoints as ``config.checkpoints``), the trained
    model's recall; writes ``results_untrained.json`` and what ``fremure eval`` writes (results.json,
    results.txt, per_predicate_R20.png, report.html) to ``work_dir``. A ``work_dir`` holding a finished
    demo is refused (ValueError) unless ``overwrite``. ``echo`` receives the progress lines."""
    import torch
    from .eval import write_json, write_report
    from .pipeline import evaluate
    from .train import run_folder
    from .train.run import make_trainer
    if finished_demo(work_dir) and not overwrite:
        raise ValueError(f"--work-dir {work_dir} holds a finished demo (results.json); give --overwrite to "
                         f"replace it, or another --work-dir")
    run_folder.prepare_new_run(config.save_path, overwrite=overwrite)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    if given_caches:
        reuse_caches(config)
        echo(f"features: reusing {config.train_cache} and {config.test_cache}")
    else:
        echo(f"detector: {extract_caches(config, detector_checkpoint, target_size, proposals)}")
        echo(f"features extracted once into {work_dir} ({time.perf_counter() - started:.0f} s so far)")
    handler = run_folder.open_log(config.save_path)
    try:
        trainer = make_trainer(config)
        run_folder.write_config_yaml(trainer.config, "fremure demo")
        mode = config.model.mode
        untrained, _ = evaluate(trainer.model, trainer.test_source, trainer.test_gt, mode, trainer.num_test,
                                config.device)
        echo(f"training: {config.nepoch} epochs over {trainer.num_train} videos, {config.model.rel_head} head, "
             f"lr {config.lr:g}, memory {config.model.rel_mem_compute}")
        history = trainer.fit()
        results, preds = evaluate(trainer.model, trainer.test_source, trainer.test_gt, mode, trainer.num_test,
                                  config.device)
    finally:
        run_folder.close_log(handler)
    os.makedirs(work_dir, exist_ok=True)
    write_json(untrained, os.path.join(work_dir, "results_untrained.json"))
    details = {"run": config.save_path, "mode": mode, "test videos evaluated": len(preds), "data": config.data_path}
    write_report(work_dir, results, preds, trainer.test_source.dataset, details, title=f"fremure demo ({mode})")
    return DemoResult(untrained, results, history, work_dir, time.perf_counter() - started)


__all__ = ["DEMO_DEFAULTS", "DemoResult", "extract_caches", "finished_demo", "reuse_caches", "run_demo"]
