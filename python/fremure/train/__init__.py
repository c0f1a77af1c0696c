"""Training of FReMuRe on cached detector entries: losses, memory rebuild, checkpoints, DDP (torchrun).

``Trainer(config, model, train_source, test_source, test_gt, frequencies).fit(resume=False)``;
``TrainConfig`` holds the published defaults; ``run_training(config)`` builds everything from
the AG folder and feature caches (see :mod:`fremure.train.run`); building, predicting and
evaluating are :mod:`fremure.pipeline`.

Names are imported on first use, so that ``fremure.train.config`` (which the command line reads
for its options) does not load the model and its compiled kernels.
"""

from fremure._lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "TrainConfig": "config", "make_config": "config", "read_config_file": "config",
    "relation_losses": "losses", "MemoryAccumulator": "memory",
    "Trainer": "trainer", "epoch_order": "trainer", "load_model_tensors": "trainer",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
