"""Training loop of FReMuRe on cached entries (published recipe, docs/method.md 5, docs/ag_and_eval.md 4.4-4.5).

One optimiser step = ``videos_per_step`` videos (1 as published) of the epoch's shuffled order;
its gradient is the mean over those videos, whatever the number of processes. Under ``torchrun``
(N processes, ``videos_per_step`` a multiple of N) the model is wrapped in DistributedDataParallel
and the videos are sharded with DistributedSampler: rank r takes places r, r + N, ... of each
step, so N processes with ``videos_per_step = k N`` see the steps of one process with the same
``videos_per_step``. A rank's losses are weighted N / (step's videos), DDP averages the gradients
over ranks, and all but a rank's last backward of a step skip the all-reduce (``no_sync``). A
rank without a video of its own (the padded tail of the last, short step) or whose last video of
the step gave a non-finite loss runs one zero-weight pass (forward and backward of a finite video
times 0), so every rank takes part in each gradient all-reduce and none waits forever. Batch-norm
running statistics are merged as one process would have them (RunningStatsMerger), losses,
validation predictions and memory sums are reduced over ranks; checkpoints, logs, TensorBoard and
the progress bar belong to rank 0. Every video's forward pass is seeded from (seed, epoch, video),
so dropout and head noise depend neither on the rank nor on where a run was resumed. Order of an
epoch: train steps, validation (with constraint; the scheduler steps on ``scheduler_metric``), best-R@20 /
best-mR@20 checkpoints, memory rebuild, then the resumable ``last``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..model import FReMuRe
from ..pipeline import autocast, evaluate_predictions, predict_videos, to_device
from ..runs import load_model_tensors, model_tensors
from . import distributed as dist_utils
from .checkpoint import (CheckpointError, clean_checkpoint_folder, finite_json, load_checkpoint, load_optimizer,
                         optimizer_tensors, rng_state, save_checkpoint, set_rng_state)
from .config import TrainConfig, resolve_device
from .losses import relation_losses
from .memory import MemoryAccumulator

logger = logging.getLogger("fremure.train")
HISTORY_FILE = "history.jsonl"


def video_seed(seed: int, epoch: int, video: int) -> int:
    """Seed of one video's training forward pass (independent of rank and resumption)."""
    return (seed * 1_000_003 + epoch * 10_007 + video) % (2 ** 63 - 1)


def sampler_seed(seed: int) -> int:
    """DistributedSampler seed of a run; epoch e's order is the permutation seeded with this + e."""
    return seed * 7919


def epoch_order(num_videos: int, seed: int, epoch: int) -> list[int]:
    """Shuffled video indices of one epoch: the global order that the ranks' shares interleave."""
    return dist_utils.rank_share(num_videos, sampler_seed(seed), epoch, world=1, rank_index=0)


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW (published defaults: lr 1e-5, weight decay 1e-2), Adam or SGD over trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay,
                                 fused=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer):
    """ReduceLROnPlateau on validation mR@20 as published (max, factor 0.5, patience 1, abs 1e-4, min 1e-7)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=1, factor=0.5, threshold=1e-4,
                                                      threshold_mode="abs", min_lr=1e-7)


class Trainer:
    """Trains ``model`` on ``train_source`` (indexable entries, e.g. FeatureCache) and validates on
    ``test_source`` with ``test_gt`` (the test split's gt_annotations).

    ``fit(resume=False)`` runs the remaining epochs and returns the history (one dict per epoch).
    Checkpoints go to ``<save_path>/checkpoints``: ``last`` (resumable), ``best_recall``,
    ``best_mrecall``. Only rank 0 writes files and logs. Under an active process group
    (:func:`fremure.train.distributed.init_from_env` first) ``self.ddp`` is the model under
    DistributedDataParallel and ``self.model`` the plain module (state, memory, evaluation).
    """

    def __init__(self, config: TrainConfig, model: FReMuRe, train_source, test_source, test_gt: Sequence,
                 frequencies: dict[str, torch.Tensor] | None = None) -> None:
        if config.device == "auto":
            config = dataclasses.replace(config, device=resolve_device(config.device))
        self.config, self.model = config, model.to(config.device)
        self.train_source, self.test_source, self.test_gt = train_source, test_source, test_gt
        self.frequencies = frequencies
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        if config.videos_per_step % self.world:
            raise ValueError(f"videos_per_step ({config.videos_per_step}) must be a multiple of the number of "
                             f"processes ({self.world}): set --videos-per-step {self.world} or a multiple of it")
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed % 2 ** 32)
        self.optimizer = make_optimizer(config, self.model)
        self.scheduler = make_scheduler(self.optimizer)
        self.scaler = torch.amp.GradScaler(torch.device(config.device).type, enabled=config.amp == "fp16")
        # DDP synchronises gradients; self.model stays the plain module (state, memory, evaluation)
        self.ddp = dist_utils.wrap_model(self.model, config.device)
        self.forward = torch.compile(self.ddp) if config.compile else self.ddp
        self.merger = dist_utils.RunningStatsMerger(self.model) if self.world > 1 else None
        self.fallback_video: int | None = None      # the rank's last video with a finite loss
        self.step_loss: float | None = None         # mean loss of the last step (None: nothing applied)
        self.epoch, self.position, self.step = 0, 0, 0
        # the current epoch's step losses and training seconds so far: saved in 'last', so that a
        # resumed epoch's history line covers the whole epoch
        self.epoch_losses: list[float] = []
        self.epoch_seconds = 0.0
        self._segment_start: float | None = None
        self.best = {"R@20": 0.0, "mR@20": 0.0}
        self.history: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.checkpoint_dir = os.path.join(config.save_path, "checkpoints")
        if self.rank == 0:
            removed = clean_checkpoint_folder(self.checkpoint_dir)
            if removed:
                logger.warning("removed %d leftovers of an interrupted checkpoint write from %s: %s", len(removed),
                               self.checkpoint_dir, ", ".join(removed))
        self.writer = None
        if self.rank == 0 and config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(config.save_path, "tensorboard"))
            except ImportError:
                logger.warning("tensorboard is not installed: no TensorBoard scalars")

    # ------------------------------------------------------------------ sizes
    @property
    def num_train(self) -> int:
        n = len(self.train_source)
        return min(n, self.config.max_train_videos) if self.config.max_train_videos else n

    @property
    def num_test(self) -> int:
        n = len(self.test_source)
        return min(n, self.config.max_test_videos) if self.config.max_test_videos else n

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "step": self.step, "best": self.best,
                "epoch_losses": list(self.epoch_losses), "epoch_seconds": self._epoch_elapsed(),
                "history": finite_json(self.history), "skipped": self.skipped, "config": self.config.to_dict(),
                "object_classes": self.model.object_classes,
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "world_size": self.world}

    def save(self, tag: str, resumable: bool) -> str | None:
        """Writes checkpoint ``tag`` (rank 0 only); returns its JSON path."""
        wanted = {"all": True, "best": tag == "best_mrecall", "last": tag == "last",
                  "none": False}[self.config.checkpoints]
        if self.rank != 0 or not wanted:
            return None
        state = self._state()
        train = None
        if resumable:
            train, optim_info = optimizer_tensors(self.optimizer)
            rng_tensors, rng_info = rng_state()
            train.update(rng_tensors)
            state.update(optimizer=optim_info, rng=rng_info)
        return save_checkpoint(self.checkpoint_dir, tag, model_tensors(self.model), state, train)

    def restore(self, path: str | None = None) -> None:
        """Loads a resumable checkpoint (default: ``last``) into model, optimiser, scheduler, memory,
        RNG states and position. CheckpointError when it is missing or damaged."""
        path = path or os.path.join(self.checkpoint_dir, "last.json")
        state, saved_model, train_tensors = load_checkpoint(path)
        if "optimizer" not in state:
            raise CheckpointError(f"{path} is a model-only checkpoint; --resume needs 'last.json'")
        load_model_tensors(self.model, saved_model, path)
        load_optimizer(self.optimizer, train_tensors, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(train_tensors, state["rng"])
        self.epoch, self.position, self.step = state["epoch"], state["position"], state["step"]
        self.best, self.history, self.skipped = state["best"], state["history"], state["skipped"]
        self.epoch_losses = list(state.get("epoch_losses", []))
        self.epoch_seconds = float(state.get("epoch_seconds") or 0.0)
        self._apply_changed_lr(state.get("config", {}).get("lr"))

    def _apply_changed_lr(self, saved_lr: float | None) -> None:
        """A resumed run asked for another --lr than the checkpoint's: every parameter group takes
        it from here on (the scheduler goes on reducing from it)."""
        if saved_lr is None or saved_lr == self.config.lr:
            return
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr
        if self.rank == 0:
            logger.info("resumed with lr %g instead of the checkpoint's %g", self.config.lr, saved_lr)

    def _epoch_elapsed(self) -> float:
        """Training seconds of the current epoch, including those before a resume."""
        if self._segment_start is None:
            return self.epoch_seconds
        return self.epoch_seconds + time.perf_counter() - self._segment_start

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False, on_step: Callable[["Trainer"], None] | None = None) -> list[dict[str, Any]]:
        """Runs the remaining epochs; ``on_step`` is called after every optimiser step."""
        if resume:
            self.restore()
        self._rewrite_history()
        config = self.config
        per_step = config.videos_per_step
        share_size = per_step // self.world
        while self.epoch < config.nepoch:
            num = self.num_train
            share = dist_utils.rank_share(num, sampler_seed(config.seed), self.epoch)
            steps = math.ceil(num / per_step)
            from tqdm.auto import tqdm
            bar = tqdm(total=num, initial=self.position, desc=f"epoch {self.epoch}", unit="video",
                       disable=not (config.progress and self.rank == 0))
            window: list[float] = []
            if self.position == 0:
                self.epoch_losses, self.epoch_seconds = [], 0.0
            self._segment_start = time.perf_counter()
            for step_index in range(self.position // per_step, steps):
                first = step_index * share_size
                places = [(share[i], (i - first) * self.world + self.rank)
                          for i in range(first, min(first + share_size, len(share)))]
                count = min(per_step, num - step_index * per_step)
                mine = [(video, place) for video, place in places if place < count]
                filler = places[0][0] if places else share[0]
                total = self.train_step(mine, count, filler)
                self.position = min((step_index + 1) * per_step, num)
                self.step += 1
                bar.update(count)
                if total is not None:
                    window.append(total)
                    self.epoch_losses.append(total)
                    bar.set_postfix(loss=f"{total:.4f}", refresh=False)
                    if self.writer is not None:
                        self.writer.add_scalar("train/loss", total, self.step)
                self.step_loss = total
                if self.step % config.log_iter == 0 and window and self.rank == 0:
                    logger.info("epoch %d step %d: mean loss %.4f", self.epoch, self.step, float(np.mean(window)))
                    window = []
                if config.save_every and self.position < num and self.position % config.save_every < per_step:
                    self.save("last", resumable=True)
                if on_step is not None:
                    on_step(self)
            bar.close()
            seconds = self._epoch_elapsed()
            self._finish_epoch(seconds, num, float(np.mean(self.epoch_losses)) if self.epoch_losses else None)
        if self.writer is not None:
            self.writer.flush()
        return self.history

    def train_step(self, videos: Sequence[int] | Sequence[tuple[int, int]], count: int | None = None,
                    filler: int | None = None) -> float | None:
        """One optimiser step; returns the mean loss of the step's finite videos (all ranks) or None.

        ``videos``: this rank's videos of the step, as indices or (index, place in the step) pairs;
        ``count``: the step's number of videos over all ranks (default ``len(videos)``);
        ``filler``: a video for the zero-weight pass of a rank without a finite video of its own.
        """
        config = self.config
        items = [v if isinstance(v, tuple) else (v, i * self.world + self.rank) for i, v in enumerate(videos)]
        count = len(items) if count is None else count
        self.ddp.train()
        self.optimizer.zero_grad(set_to_none=False)
        weight = self.world / count          # DDP averages over ranks: the step's mean over its videos
        if self.merger is not None:
            self.merger.begin(config.videos_per_step)
        loss_sum = torch.zeros(2, dtype=torch.float64)   # (sum of finite losses, number of finite videos)
        skipped: list[dict[str, Any]] = []
        synced = self.world == 1
        for i, (video, place) in enumerate(items):
            last = i == len(items) - 1
            loss = self._backward(video, weight, sync=last, place=place)
            if loss is None:
                skipped.append(self._skip_record(video, "non-finite loss"))
                continue
            synced = synced or last
            self.fallback_video = video
            loss_sum += torch.tensor([loss, 1.0], dtype=torch.float64)
        if not synced:
            self._zero_weight_pass(filler if filler is not None else (items[0][0] if items else 0))
        loss_sum = dist_utils.all_reduce_sum(loss_sum)
        if self.merger is not None:
            self.merger.finish()
        if int(loss_sum[1]) < count:            # some rank skipped a video: every rank learns which
            skipped = dist_utils.gather_objects(skipped)
        self._log_skips(skipped)
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], config.clip)
        if not torch.isfinite(norm):
            first = items[0][0] if items else -1
            self._log_skips([self._skip_record(first, f"non-finite gradient norm {float(norm)}; step skipped")])
            self.optimizer.zero_grad(set_to_none=False)
            self.scaler.update()
            return None
        if loss_sum[1] == 0:
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss_sum[0] / loss_sum[1])

    def _forward_loss(self, video: int) -> torch.Tensor:
        """Seeded training forward pass and total loss of one video (NaN when the kernels refuse it)."""
        config = self.config
        torch.manual_seed(video_seed(config.seed, self.epoch, video))
        entry = to_device(self.train_source[video], config.device)
        try:
            with autocast(config.device, config.amp):
                pred = self.forward(entry, phase="train")
            losses = relation_losses(pred, config.model.mode, config.model.rel_head, config.model.obj_head, config.spatial_loss)
            return sum(losses.values())
        except (RuntimeError, ValueError) as err:  # the fused kernels refuse NaN/inf inputs (ValueError)
            if "nan" not in str(err).lower():
                raise
            return torch.tensor(float("nan"))

    def _backward(self, video: int, weight: float, sync: bool, place: int | None = None) -> float | None:
        """Forward and backward of one video with its loss times ``weight``; gradients are all-reduced
        only when ``sync``. Returns the loss, or None (nothing applied, statistics restored) when it
        is not finite."""
        before = self.merger.snapshot() if self.merger is not None else None
        # batch-norm statistics change in the forward pass: keep them to undo a non-finite video
        buffers = {name: b.clone() for name, b in self.model.named_buffers()
                   if name.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        context = contextlib.nullcontext() if sync or self.world == 1 else self.ddp.no_sync()
        with context:
            loss = self._forward_loss(video)
            finite = bool(torch.isfinite(loss))
            if finite and (weight != 0 or sync):
                self.scaler.scale(loss * weight).backward()
        if not finite or weight == 0:
            with torch.no_grad():
                for name, value in self.model.named_buffers():
                    if name in buffers:
                        value.copy_(buffers[name])
            return None if not finite else float(loss.detach())
        if self.merger is not None and place is not None:
            self.merger.record(place, before)
        return float(loss.detach())

    def _zero_weight_pass(self, filler: int) -> None:
        """A gradient all-reduce that adds nothing: forward and backward of a finite video times 0
        (the rank's last finite video, else the filler, else the first finite one of the split)."""
        candidates = ([self.fallback_video] if self.fallback_video is not None else []) + [filler]
        for video in candidates + list(range(self.num_train)):
            if self._backward(video, 0.0, sync=True) is not None:
                return
        raise RuntimeError(f"rank {self.rank}: no training video gives a finite loss")

    def _skip_record(self, video: int, reason: str) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "video": int(video), "reason": reason}

    def _log_skips(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.skipped.append(record)
            if self.rank == 0:
                logger.warning("skipping video %d at epoch %d: %s", record["video"], record["epoch"], record["reason"])
        if records and self.writer is not None:
            self.writer.add_scalar("train/skipped", len(self.skipped), self.step)

    def validate(self, constraints: Sequence[str] = ("with",)) -> dict[str, dict[str, Any]]:
        """Test-split metrics (every rank predicts its share; rank 0's result is broadcast)."""
        indices = list(range(self.num_test))[self.rank::self.world]
        preds = predict_videos(self.model, self.test_source, indices, self.config.device, self.config.amp)
        preds = dist_utils.gather_objects(preds)
        summary = evaluate_predictions(self.config.model.mode, preds, self.test_gt, constraints) if self.rank == 0 else None
        return dist_utils.broadcast_object(summary)

    def rebuild_memory(self) -> None:
        """TEMPURA memory from a no-dropout pass over the training videos (streamed sums, all-reduced)."""
        if self.config.model.rel_mem_compute == "none":
            return
        from ..model.relation_model import EMBED_DIM
        accumulator = MemoryAccumulator(EMBED_DIM, self.frequencies, self.config.mem_temperature)
        self.model.eval()
        with torch.no_grad():
            for video in list(range(self.num_train))[self.rank::self.world]:
                entry = to_device(self.train_source[video], self.config.device)
                with autocast(self.config.device, self.config.amp):
                    out = self.model(entry, phase="train")
                accumulator.add_video(out)
        for tensor in accumulator.state_tensors().values():
            tensor.copy_(dist_utils.all_reduce_sum(tensor))
        self.model.rel_memory = accumulator.prototypes()

    # ------------------------------------------------------------------ history file
    @property
    def history_path(self) -> str | None:
        """``<save_path>/history.jsonl`` (one JSON line per finished epoch) on rank 0, else None."""
        if self.rank != 0:
            return None
        return os.path.join(self.config.save_path, HISTORY_FILE)

    def _rewrite_history(self) -> None:
        """history.jsonl as the (restored) history holds it: an epoch that finished after the last
        checkpoint of a killed run is dropped here and written again when it is redone."""
        path = self.history_path
        if path is None:
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".tmp", "w") as handle:
            handle.writelines(json.dumps(finite_json(record), allow_nan=False) + "\n" for record in self.history)
        os.replace(path + ".tmp", path)

    def _append_history(self, record: dict[str, Any]) -> None:
        path = self.history_path
        if path is not None:
            with open(path, "a") as handle:
                handle.write(json.dumps(finite_json(record), allow_nan=False) + "\n")

    def _finish_epoch(self, seconds: float, videos: int, loss: float | None = None) -> None:
        summary = self.validate()["with"]
        recall, mrecall = summary["R"][20], summary["mR"][20]
        record = {"epoch": self.epoch, "loss": loss, "R@20": recall, "mR@20": mrecall, "R": summary["R"],
                  "mR": summary["mR"], "lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds,
                  "videos_per_s": videos / seconds if seconds > 0 else float("nan")}
        self.history.append(record)
        if self.rank == 0:
            logger.info("epoch %d: loss %s  R@10/20/50 %s  mR@10/20/50 %s  lr %.2e  (%.1f s)", self.epoch,
                        "n/a" if loss is None else f"{loss:.4f}",
                        " / ".join(f"{100 * summary['R'][k]:.2f}" for k in (10, 20, 50)),
                        " / ".join(f"{100 * summary['mR'][k]:.2f}" for k in (10, 20, 50)), record["lr"], seconds)
            if self.writer is not None:
                for metric in ("R", "mR"):
                    for k, v in summary[metric].items():
                        self.writer.add_scalar(f"val/{metric}@{k}", v, self.epoch)
                self.writer.add_scalar("train/lr", record["lr"], self.epoch)
        for metric, value, tag in (("R@20", recall, "best_recall"), ("mR@20", mrecall, "best_mrecall")):
            if value > self.best[metric]:
                self.best[metric] = value
                self.save(tag, resumable=False)
        self.scheduler.step(mrecall if self.config.scheduler_metric == "mR@20" else recall)
        self.rebuild_memory()
        self.epoch, self.position = self.epoch + 1, 0
        self.epoch_losses, self.epoch_seconds, self._segment_start = [], 0.0, None
        self.save("last", resumable=True)
        self._append_history(record)            # after 'last': a resumed run never repeats a line
