"""Process-group helpers: no-ops in a single process, collectives under ``torchrun``."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


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


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input when single-process)."""
    if not active():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out)
    return out


def all_reduce_gradients(model: torch.nn.Module) -> None:
    """Sums every trainable parameter's gradient over ranks in one flat buffer (each rank already
    divided its losses by the step's global video count, so the sum is the step's mean)."""
    if not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters() if p.requires_grad]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p in (p for p in model.parameters() if p.requires_grad):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


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
