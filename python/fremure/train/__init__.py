"""Training of FReMuRe on cached detector entries: losses, memory rebuild, checkpoints, DDP (torchrun).

``Trainer(config, model, train_source, test_source, test_gt, frequencies).fit(resume=False)``;
``TrainConfig`` holds the published defaults; ``run_training(config)`` builds everything from
the AG folder and feature caches (see :mod:`fremure.train.pipeline`); building, predicting and
evaluating are :mod:`fremure.pipeline`.
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig, make_config, read_config_file
from .losses import relation_losses
from .memory import MemoryAccumulator
from .trainer import Trainer, epoch_order, load_model_tensors

__all__ = ["CheckpointError", "MemoryAccumulator", "TrainConfig", "Trainer", "epoch_order", "load_checkpoint",
           "load_model_tensors", "make_config", "read_config_file", "relation_losses", "save_checkpoint"]
