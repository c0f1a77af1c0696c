"""Per-step accounting of bench_model.py (issue 19, item 1): FLOPs, dispatched ops / launches, host
syncs, profiler leaf events, and the step's GEMMs against ``torch.mm`` on the same shapes in isolation.

``account_step(step, entry, labels)`` runs three more training steps (FlopCounterMode, the op
counter, the profiler) and returns one dict of summary columns plus one row per GEMM shape.
The isolated roofline of a shape is the best GFLOP/s of ``torch.mm`` over the four operand
layouts (each operand stored as it is or transposed), best of ``repeats`` timings after a
warm-up; bmm shapes are timed as ``torch.bmm``.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from fremure.train.accounting import count_ops, gemm_calls, profiler_leaf_ops


def _operands(batch: int, m: int, k: int, n: int, layout: str, device: str):
    """Operands of one layout: "nn", "nt", "tn", "tt" (t = stored transposed, then viewed back)."""
    def matrix(rows, cols, transposed):
        shape = (batch, cols, rows) if transposed else (batch, rows, cols)
        t = torch.randn(shape, device=device)
        t = t.transpose(1, 2) if transposed else t
        return t if batch > 1 else t[0]

    return matrix(m, k, layout[0] == "t"), matrix(k, n, layout[1] == "t")


def isolated_gflops(shape: tuple[int, int, int, int], device: str, repeats: int = 5) -> float:
    """Best GFLOP/s of torch.mm / torch.bmm of ``(batch, m, k, n)`` over the four layouts."""
    batch, m, k, n = shape
    flops = 2 * batch * m * k * n
    best = float("inf")
    for layout in ("nn", "nt", "tn", "tt"):
        a, b = _operands(batch, m, k, n, layout, device)
        product = torch.bmm if batch > 1 else torch.mm
        product(a, b)
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            product(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_rows(calls, device: str) -> list[dict]:
    """One row per GEMM shape: calls, GFLOP, time in the step, achieved and isolated GFLOP/s."""
    by_shape: dict[tuple, list] = collections.defaultdict(list)
    for call in calls:
        by_shape[call.shape].append(call)
    rows = []
    for shape, group in sorted(by_shape.items(), key=lambda item: -sum(c.flops for c in item[1])):
        flops = sum(c.flops for c in group)
        seconds = sum(c.seconds for c in group)
        best = isolated_gflops(shape, device)
        rows.append(dict(batch=shape[0], m=shape[1], k=shape[2], n=shape[3], calls=len(group),
                         ops=",".join(sorted({c.op for c in group})), gflop=flops / 1e9, ms=seconds * 1e3,
                         gflops=flops / seconds / 1e9 if seconds else float("nan"), isolated_gflops=best,
                         fraction_of_isolated=(flops / seconds / 1e9) / best if seconds else float("nan")))
    return rows


def account_step(step: Callable, entry: dict, labels: dict, device: str) -> tuple[dict, list[dict]]:
    """Summary columns of one training step and its per-shape GEMM rows (see the module doc)."""
    with FlopCounterMode(display=False) as flop_counter:
        step(entry, labels)
    counts = count_ops(step, entry, labels)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    _sync(device)
    with profile(activities=activities, record_shapes=True) as prof:
        step(entry, labels)
        _sync(device)
    events = prof.events()
    rows = gemm_rows(gemm_calls(events, device_time=device.startswith("cuda")), device)
    step_flops = flop_counter.get_total_flops()
    gemm_flops = sum(r["gflop"] for r in rows) * 1e9
    gemm_seconds = sum(r["ms"] for r in rows) * 1e-3
    ideal_seconds = sum(r["gflop"] / r["isolated_gflops"] for r in rows)
    self_cpu = sum(e.self_cpu_time_total for e in events) * 1e-6
    summary = dict(gflop_per_step=step_flops / 1e9, dispatched_ops=counts.dispatched, launch_ops=counts.launches,
                   host_syncs=counts.host_syncs, profiler_leaf_events=profiler_leaf_ops(events),
                   gemm_calls=sum(r["calls"] for r in rows), gemm_ms=gemm_seconds * 1e3,
                   gemm_share_of_cpu=gemm_seconds / self_cpu if self_cpu else float("nan"),
                   gemm_gflops=gemm_flops / gemm_seconds / 1e9 if gemm_seconds else float("nan"),
                   isolated_gemm_gflops=gemm_flops / ideal_seconds / 1e9 if ideal_seconds else float("nan"),
                   gemm_fraction_of_isolated=ideal_seconds / gemm_seconds if gemm_seconds else float("nan"))
    if device.startswith("cuda"):
        summary["cuda_kernels"] = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return summary, rows
