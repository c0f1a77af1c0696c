"""One process of tests/test_train_distributed.py, started by torchrun:

    python -m torch.distributed.run --nproc_per_node=2 tests/distributed_worker.py OUT train ARGS...

runs ``fremure.cli.main(["train", ARGS...])`` as ``torchrun -m fremure train`` would, and records
what the test compares: every optimiser step's loss, the calls of ``save_checkpoint``, what the
process printed, the skipped videos, and its final weights and memory (``OUT/rank<R>.json``,
``OUT/rank<R>.safetensors``). ``FREMURE_TEST_NONFINITE=EPOCH:VIDEO`` makes that video's training
loss NaN in that epoch (see :func:`poison`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

import torch
from safetensors.torch import save_file

from fremure import cli
from fremure.train import run, trainer as trainer_module
from fremure.runs import model_tensors


def poison(epoch: int, video: int) -> None:
    """Trainer._forward_loss gives NaN for ``video`` in ``epoch`` (as a video the kernels refuse)."""
    forward_loss = trainer_module.Trainer._forward_loss

    def poisoned(self, index):
        loss = forward_loss(self, index)
        return loss * float("nan") if (self.epoch, index) == (epoch, video) else loss

    trainer_module.Trainer._forward_loss = poisoned


def main(out: str, argv: list[str]) -> int:
    rank = int(os.environ["RANK"])
    losses: list[float | None] = []
    saves: list[str] = []
    captured: dict[str, object] = {}
    train_step, save_checkpoint, run_training = (trainer_module.Trainer.train_step, trainer_module.save_checkpoint,
                                                 run.run_training)

    def recording_step(self, *args, **kwargs):
        loss = train_step(self, *args, **kwargs)
        losses.append(loss)
        return loss

    def recording_save(folder, tag, *args, **kwargs):
        saves.append(tag)
        return save_checkpoint(folder, tag, *args, **kwargs)

    def capturing_run(config, **kwargs):
        trainer, history = run_training(config, **kwargs)
        captured["trainer"] = trainer
        return trainer, history

    trainer_module.Trainer.train_step = recording_step
    if os.environ.get("FREMURE_TEST_NONFINITE"):
        poison(*(int(x) for x in os.environ["FREMURE_TEST_NONFINITE"].split(":")))
    trainer_module.save_checkpoint = recording_save
    run.run_training = capturing_run
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(argv)
    record = {"code": code, "losses": losses, "saves": saves, "stdout": printed.getvalue()}
    trainer = captured.get("trainer")
    if trainer is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_tensors(trainer.model).items()},
                  os.path.join(out, f"rank{rank}.safetensors"))
        record.update(world=trainer.world, ddp=type(trainer.ddp).__name__, threads=torch.get_num_threads(),
                      skipped=trainer.skipped)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2:]))
