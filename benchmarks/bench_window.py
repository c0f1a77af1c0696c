"""Benchmark window_pack + window_unpack("latter") (window 2, stride 1: the published global branch).

Providers:
- reference:  fremure_ext.reference (per-window masked selects into a zero-padded tensor, per-window
              masked scatter back), the published loops generalised to any window/stride;
- published:  the published global input exactly (also builds the [2l, b-1, D] position embedding
              and the frame index) and its "latter" scatter;
- ops:        torch.ops.fremure, padded layout (the published [n_win, 2l, D], batch-first);
- ops_packed: torch.ops.fremure, packed layout (no padding rows).
The decoder between pack and unpack is left out: pack's output goes straight into unpack.

The eager backward of both loop versions is quadratic: every per-window slice assignment into the
padded tensor makes autograd clone the whole padded gradient once per window. At N=8192 one
reference forward+backward takes tens of seconds, so "published" is left out at that size.
"""

from __future__ import annotations

import pathlib
import sys

import torch

from _harness import Case, main

import fremure_ext
from fremure_ext import reference

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import published_layouts as published  # noqa: E402  (the published tensors, rebuilt in tests/)


def _video(frames: int, lo: int, hi: int, total: int | None, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(lo, hi + 1, (frames,), generator=g)
    if total is not None:  # rescale to exactly `total` rows, keeping every frame non-empty
        counts = (counts.double() * total / counts.sum()).round().clamp(min=1).long()
        counts[-1] += total - int(counts.sum())
    return counts.tolist()


def cases(device: str = "cpu", dtype: torch.dtype = torch.float32, quick: bool = False) -> list[Case]:
    dim = 1936
    videos = [("30 frames, 1-6 pairs", _video(30, 1, 6, None, 0))]
    if not quick:
        videos += [("60 frames, ~300 rows", _video(60, 1, 9, 300, 1)),
                   ("64 frames, N=8192", _video(64, 96, 160, 8192, 2))]
    out = []
    for label, counts in videos:
        n = sum(counts)
        off = torch.tensor([0, *counts], dtype=torch.long).cumsum(0).to(device)
        im_idx = torch.repeat_interleave(torch.arange(len(counts), device=device),
                                         torch.tensor(counts, device=device))
        table = torch.rand(2, dim, device=device, dtype=dtype)
        x = torch.randn(n, dim, device=device, dtype=dtype, requires_grad=True)

        def run_reference(x=x, off=off, n=n):
            y, src, _, _ = reference.window_pack(x, off, 2, 1, True)
            return reference.window_unpack(y, src, None, n, "latter")

        def run_published(x=x, im_idx=im_idx, table=table, n=n):
            global_input, _, idx, _ = published.published_global_input(x, im_idx, table)
            return published.published_global_scatter(global_input, idx, im_idx, n, "latter")

        def run_ops(x=x, off=off, n=n, padded=True):
            y, src, _, _ = fremure_ext.window_pack(x, off, 2, 1, padded)
            return fremure_ext.window_unpack(y, src, None, n, "latter")

        padded_rows = (len(counts) - 1) * 2 * max(counts)
        providers = {"reference": run_reference, "published": run_published, "ops": run_ops,
                     "ops_packed": lambda f=run_ops: f(padded=False)}
        if n > 1000:
            del providers["published"]  # same quadratic backward as reference: minutes per call
        out.append(Case(
            op="window_pack+unpack", size=f"{label} D={dim}", inputs=[x], providers=providers,
            bytes_moved=(2 * padded_rows + 2 * n) * dim * x.element_size()))
    return out


if __name__ == "__main__":
    main(cases, "window")
