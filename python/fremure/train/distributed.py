"""Process-group helpers: no-ops in a single process, collectives under ``torchrun``.

``init_from_env`` joins the group torchrun describes (gloo on CPU, nccl on CUDA), ``wrap_model``
puts a model under :class:`~torch.nn.parallel.DistributedDataParallel`, ``rank_share`` shards an
epoch's videos with :class:`~torch.utils.data.distributed.DistributedSampler`, and
:class:`RunningStatsMerger` makes batch-norm running statistics after a step equal to those of one
process that saw the step's videos in order.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def init_from_env(device: str = "cpu") -> bool:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA.
    Returns True when distributed."""
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return active()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    return True


def destroy() -> None:
    """Leaves the process group (no-op in a single process)."""
    if active():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, device: str | torch.device = "cpu") -> torch.nn.Module:
    """``model`` under DistributedDataParallel when a group is active, else ``model`` itself.

    ``find_unused_parameters=True``: which modules take part changes between passes (no relation
    memory before the first rebuild, memory attention after it; unused modules with
    ``keep_unused``), which rules out ``static_graph``. ``forward_sync_buffers=False``: buffers are
    copied from rank 0 once, at wrapping; batch-norm running statistics are then merged by
    :class:`RunningStatsMerger` instead of copied from rank 0 before every forward.
    """
    if not active():
        return model
    device = torch.device(device)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False,
                                                     find_unused_parameters=True)


def rank_share(num_videos: int, seed: int, epoch: int, world: int | None = None,
               rank_index: int | None = None) -> list[int]:
    """This rank's videos of an epoch, DistributedSampler order: position i of the returned list is
    position ``i * world + rank`` of the epoch's global order (a permutation seeded with
    ``seed + epoch``), padded at the end with the first videos of that order so every rank holds
    ``ceil(num_videos / world)``; positions ``>= num_videos`` are padding."""
    world = world_size() if world is None else world
    rank_index = rank() if rank_index is None else rank_index
    sampler = DistributedSampler(range(num_videos), num_replicas=world, rank=rank_index, shuffle=True, seed=seed,
                                 drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input when single-process)."""
    if not active():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out)
    return out


def gather_objects(items: list) -> list:
    """Concatenation of every rank's list (all ranks get it)."""
    if not active():
        return items
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's object on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class RunningStatsMerger:
    """Batch-norm running statistics of a step split over ranks, as one process would have them.

    One process updates ``r <- (1 - m) r + m s`` once per batch-norm call, video after video. A
    video whose forward made ``q`` calls of a layer therefore adds ``c = r_after - (1 - m)^q r_before``
    (its batch statistics' share, whatever ``r_before`` was), and after the step's videos in order
    ``r = (1 - m)^Q r_start + sum_i (1 - m)^(calls after video i) c_i``. Each rank records ``q`` and
    ``c`` of its videos at their places in the step; ``finish`` sums the terms over ranks (float64)
    and sets every rank's statistics to that value, which differs from the sequential float32
    update by rounding only. In train mode batch norm normalises with the batch's own statistics,
    so the running values never change a training step; they matter for evaluation and the memory.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.norms = [m for m in model.modules()
                      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        for module in self.norms:
            if module.momentum is None:
                raise ValueError("batch norm with momentum=None (cumulative average) cannot be merged across ranks")

    def begin(self, slots: int) -> None:
        """Starts a step of ``slots`` video places (the step's videos over all ranks)."""
        self.start = self.snapshot()
        self.calls = torch.zeros(len(self.norms), slots, dtype=torch.float64)
        self.pending: list[tuple[int, list[torch.Tensor]]] = []

    def snapshot(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Copies of every layer's (running_mean, running_var, num_batches_tracked)."""
        return [(m.running_mean.detach().clone(), m.running_var.detach().clone(), m.num_batches_tracked.detach().clone())
                for m in self.norms]

    def record(self, slot: int, before: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Notes the change made by the video at place ``slot`` since the snapshot ``before``."""
        contributions = []
        for j, (module, (mean0, var0, count0)) in enumerate(zip(self.norms, before)):
            q = int(module.num_batches_tracked) - int(count0)
            self.calls[j, slot] = q
            decay = (1.0 - module.momentum) ** q
            contributions.append(torch.stack([module.running_mean.detach().double().cpu() - decay * mean0.double().cpu(),
                                              module.running_var.detach().double().cpu() - decay * var0.double().cpu()]))
        self.pending.append((slot, contributions))

    def finish(self) -> None:
        """Sets every layer's statistics to the merged value (identical on all ranks)."""
        if not self.norms:
            return
        calls = all_reduce_sum(self.calls)
        later = calls.flip(1).cumsum(1).flip(1) - calls         # calls made after each place
        flat = []
        for j, module in enumerate(self.norms):
            term = torch.zeros(2, module.num_features, dtype=torch.float64)
            for slot, contributions in self.pending:
                term += (1.0 - module.momentum) ** float(later[j, slot]) * contributions[j]
            flat.append(term.reshape(-1))
        summed = all_reduce_sum(torch.cat(flat))
        offset = 0
        with torch.no_grad():
            for j, (module, (mean0, var0, count0)) in enumerate(zip(self.norms, self.start)):
                n = module.num_features
                term = summed[offset:offset + 2 * n].view(2, n)
                offset += 2 * n
                decay = (1.0 - module.momentum) ** float(calls[j].sum())
                module.running_mean.copy_(decay * mean0.double().cpu() + term[0])
                module.running_var.copy_(decay * var0.double().cpu() + term[1])
                module.num_batches_tracked.copy_(count0 + int(calls[j].sum()))
        self.pending = []
