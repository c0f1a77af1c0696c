"""Machine-independent accounting of a training step: dispatched ops, kernel launches, host syncs,
FLOPs and the GEMMs it runs (docs/benchmarks.md).

Counts, not times: they do not depend on the machine or its load, so tests may check them.

- :class:`OpCounter` sees every ATen / fremure op below autograd (a ``TorchDispatchMode``): the ops
  a step dispatches after autograd and the composite decompositions, each counted once, whatever
  it runs inside. Of those, *launches* are the ops that do work on a device: views (``t``,
  ``view``, ``detach``, ...) and bare allocations (``empty*``) launch no kernel.
- :func:`gemm_calls` lists the matrix products of a profiled step with their shapes and times.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# allocations without a fill and profiler bookkeeping: no kernel on any device
_NO_KERNEL = frozenset({
    "aten.empty.memory_format", "aten.empty_strided.default", "aten.empty_like.default",
    "aten.new_empty.default", "aten.new_empty_strided.default",
    "profiler._record_function_enter_new.default", "profiler._record_function_exit._RecordFunction",
})
# ops that copy a device value to the host (a synchronisation on a GPU, a graph break when compiled)
_HOST_SYNC = frozenset({"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.equal.default"})
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv")


@dataclasses.dataclass
class OpCounts:
    """Per-op counts of one run: ``ops`` maps op name -> calls; ``views`` the op names that are views."""

    ops: collections.Counter
    views: frozenset

    @property
    def dispatched(self) -> int:
        """Every op call below autograd, views included."""
        return sum(self.ops.values())

    @property
    def launches(self) -> int:
        """Calls that run a kernel: neither a view nor a bare allocation."""
        return sum(n for name, n in self.ops.items() if name not in self.views and name not in _NO_KERNEL)

    @property
    def host_syncs(self) -> int:
        """Calls that read a device value on the host (``.item()``, ``nonzero``, ...)."""
        return sum(n for name, n in self.ops.items() if name in _HOST_SYNC)

    def top(self, count: int = 20) -> list[tuple[str, int]]:
        """The ``count`` most frequent launching ops as (name, calls)."""
        launching = {name: n for name, n in self.ops.items() if name not in self.views and name not in _NO_KERNEL}
        return collections.Counter(launching).most_common(count)


class OpCounter(TorchDispatchMode):
    """Counts the ops dispatched inside ``with OpCounter() as counter:``; ``counter.counts()``."""

    def __init__(self) -> None:
        super().__init__()
        self._ops: collections.Counter = collections.Counter()
        self._views: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        self._ops[name] += 1
        if getattr(func, "is_view", False):
            self._views.add(name)
        return func(*args, **(kwargs or {}))

    def counts(self) -> OpCounts:
        """The counts so far."""
        return OpCounts(collections.Counter(self._ops), frozenset(self._views))


def count_ops(fn: Callable[..., Any], *args, **kwargs) -> OpCounts:
    """Runs ``fn(*args, **kwargs)`` once under :class:`OpCounter` and returns its counts."""
    with OpCounter() as counter:
        fn(*args, **kwargs)
    return counter.counts()


@dataclasses.dataclass(frozen=True)
class GemmCall:
    """One matrix product of a profiled run: ``[batch x] (m x k) @ (k x n)`` and its inclusive CPU time."""

    op: str
    batch: int
    m: int
    k: int
    n: int
    seconds: float

    @property
    def flops(self) -> int:
        """Multiply-adds times two."""
        return 2 * self.batch * self.m * self.k * self.n

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(batch, m, k, n)``."""
        return self.batch, self.m, self.k, self.n


def _gemm_dims(op: str, shapes: list[list[int]]) -> tuple[int, int, int, int] | None:
    """``(batch, m, k, n)`` from the recorded input shapes of one GEMM op (None when unrecognised)."""
    if op == "aten::mm" and len(shapes) >= 2 and len(shapes[0]) == 2:
        return 1, shapes[0][0], shapes[0][1], shapes[1][1]
    if op == "aten::addmm" and len(shapes) >= 3 and len(shapes[1]) == 2:
        return 1, shapes[1][0], shapes[1][1], shapes[2][1]
    if op == "aten::bmm" and len(shapes) >= 2 and len(shapes[0]) == 3:
        return shapes[0][0], shapes[0][1], shapes[0][2], shapes[1][2]
    if op == "aten::baddbmm" and len(shapes) >= 3 and len(shapes[1]) == 3:
        return shapes[1][0], shapes[1][1], shapes[1][2], shapes[2][2]
    if op in ("aten::mv", "aten::addmv"):
        mat = shapes[0] if op == "aten::mv" else shapes[1]
        return (1, mat[0], mat[1], 1) if len(mat) == 2 else None
    return None


def gemm_calls(events: Iterable[Any], device_time: bool = False) -> list[GemmCall]:
    """The outermost GEMM events of a ``torch.profiler`` run (``record_shapes=True``), GEMMs run
    inside other ops (e.g. the fremure kernels) included; a GEMM nested in another GEMM is part
    of the outer one's time. Times are the events' inclusive CPU time, or with ``device_time``
    the time of the GPU kernels they launched."""
    calls = []
    for event in events:
        if event.name not in GEMM_OPS or _has_gemm_ancestor(event):
            continue
        dims = _gemm_dims(event.name, [list(s) for s in event.input_shapes])
        if dims is not None:
            micros = event.device_time_total if device_time else event.cpu_time_total
            calls.append(GemmCall(event.name, *dims, seconds=micros * 1e-6))
    return calls


def _has_gemm_ancestor(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in GEMM_OPS:
            return True
        parent = parent.cpu_parent
    return False


def profiler_leaf_ops(events: Iterable[Any]) -> int:
    """Profiler events without a child event: the op count of issue 19's first table (it counts
    views and allocations made inside kernels too, so it exceeds :attr:`OpCounts.launches`)."""
    return sum(1 for event in events if not event.cpu_children)
