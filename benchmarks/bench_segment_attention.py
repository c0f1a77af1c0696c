"""Benchmark segment_attention on Action-Genome-like token layouts (H = 8, Dh = 242, D = 1936).

Providers:
- reference: the padded masked-softmax attention of fremure_ext.reference (what the published
  nn.MultiheadAttention computes between its projections);
- ops: torch.ops.fremure.segment_attention on the packed tokens;
- sdpa_padded: torch.nn.functional.scaled_dot_product_attention on the padded [S, H, Lmax, Dh]
  batch with a boolean key mask, including the pad and unpad copies a padded implementation pays.

FREMURE_BENCH_DROPOUT=p (default 0) runs every provider with attention dropout p (training mode;
results go to segment_attention_dropout<p>_<device>.csv).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from _harness import Case, main

import fremure_ext
from fremure_ext import reference
from fremure_ext.reference.segment_attention import pad_segments, unpad_segments

HEADS, HEAD_DIM = 8, 242
DROPOUT = float(os.environ.get("FREMURE_BENCH_DROPOUT", "0"))


def _layout(name: str, segments: int, lo: int, hi: int, seed: int) -> tuple[str, list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (segments,), generator=g).tolist()
    return f"{name} S={segments} L={lo}..{hi} T={sum(lengths)}", lengths


def _windows(frames: list[int]) -> tuple[str, list[int]]:
    """Windows of 2 consecutive frames, stride 1 (the global branch's layout)."""
    lengths = [a + b for a, b in zip(frames[:-1], frames[1:])]
    return f"window S={len(lengths)} L<={max(lengths)} T={sum(lengths)}", lengths


def sdpa_padded(q, k, v, segment_offsets, scale, dropout_p=0.0):
    qp, mask, index = pad_segments(q, segment_offsets)
    kp, _, _ = pad_segments(k, segment_offsets)
    vp, _, _ = pad_segments(v, segment_offsets)
    keep = ~mask[:, None, None, :]  # [S, 1, 1, Lmax], True = attend
    out = F.scaled_dot_product_attention(qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2),
                                         attn_mask=keep, scale=scale, dropout_p=dropout_p)
    return unpad_segments(out.transpose(1, 2), index)


def cases(device: str = "cpu", dtype: torch.dtype = torch.float32, quick: bool = False) -> list[Case]:
    frames30 = _layout("frame", 30, 1, 6, seed=1)
    frames60 = _layout("frame", 60, 0, 6, seed=2)
    layouts = [frames30] if quick else [
        frames30,
        _layout("window", 29, 2, 12, seed=3),
        frames60,
        _windows(frames60[1]),
        _layout("frame", 100, 1, 6, seed=4),
    ]
    out = []
    drop = dict(dropout_p=DROPOUT, seed=1) if DROPOUT > 0 else {}
    for label, lengths in layouts:
        offsets = torch.tensor([0] + lengths, device=device).cumsum(0)
        tokens = int(offsets[-1])
        scale = HEAD_DIM ** -0.5
        q, k, v = (torch.randn(tokens, HEADS, HEAD_DIM, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        out.append(Case(
            op="segment_attention", size=label, inputs=[q, k, v],
            providers={
                "reference": lambda q=q, k=k, v=v, o=offsets: reference.segment_attention(q, k, v, o, scale, **drop),
                "ops": lambda q=q, k=k, v=v, o=offsets: fremure_ext.segment_attention(q, k, v, o, scale, **drop),
                "sdpa_padded": lambda q=q, k=k, v=v, o=offsets: sdpa_padded(q, k, v, o, scale, DROPOUT),
            },
            bytes_moved=4 * q.numel() * q.element_size()))
    return out


if __name__ == "__main__":
    main(cases, f"segment_attention_dropout{DROPOUT:g}" if DROPOUT > 0 else "segment_attention")
