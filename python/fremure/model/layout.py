"""Index bookkeeping of one video's relation pairs: frames and slots (the sliding windows are
``fremure_ext.window_pack``'s).

Pairs are rows sorted by frame. ``frame_offsets [b + 1]`` (CSR) says frame f owns rows
``frame_offsets[f] .. frame_offsets[f + 1] - 1``; the *slot* of a row is its rank inside its frame.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class FrameLayout(NamedTuple):
    """Frames of a video's pairs (all int64 on the features' device).

    frame: ``[N]`` frame of each row; offsets: ``[b + 1]`` CSR; counts: ``[b]`` rows per frame;
    slot: ``[N]`` rank of each row in its frame; num_frames: b; most: l, the most rows in a frame.
    """

    frame: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor
    slot: torch.Tensor
    num_frames: int
    most: int


def frame_layout(im_idx: torch.Tensor, num_rows: int, device: torch.device | None = None) -> FrameLayout:
    """Checks ``im_idx`` and derives the frame layout of ``num_rows`` pairs.

    Args:
        im_idx: ``[N]`` frame index of each pair (float as the published entries store it, or
            integer); whole numbers >= 0, non-decreasing. ``b = im_idx[-1] + 1`` as published.
        num_rows: N, the number of feature rows ``im_idx`` must describe.

    Raises:
        TypeError / ValueError naming ``im_idx`` when it is not a 1-D tensor of N sorted frame numbers.
    """
    if not isinstance(im_idx, torch.Tensor):
        raise TypeError(f"im_idx must be a torch.Tensor, got {type(im_idx).__name__}")
    if im_idx.dim() != 1 or im_idx.shape[0] != num_rows:
        raise ValueError(f"im_idx must be [N] with N = {num_rows} (one frame index per feature row), "
                         f"got shape {tuple(im_idx.shape)}")
    if num_rows == 0:
        raise ValueError("im_idx is empty: a video needs at least one relation pair")
    if im_idx.dtype == torch.bool or im_idx.is_complex():
        raise TypeError(f"im_idx must hold frame numbers (float or integer), got {im_idx.dtype}")
    device = im_idx.device if device is None else device
    if not torch.compiler.is_compiling():
        _check_frames(im_idx)
    frame = im_idx.to(device=device, dtype=torch.long)
    last = int(frame[-1])
    torch._check(last >= 0)  # lets torch.compile treat the frame count as a size
    num_frames = last + 1
    offsets = torch.searchsorted(frame, torch.arange(num_frames + 1, device=device))
    counts = offsets.diff()
    slot = torch.arange(num_rows, device=device) - offsets[frame]
    most = int(counts.max())
    torch._check(most >= 1)
    return FrameLayout(frame, offsets, counts, slot, num_frames, most)


def _check_frames(im_idx: torch.Tensor) -> None:
    values = im_idx.detach().double()
    if not bool(torch.isfinite(values).all()) or bool((values != values.round()).any()):
        raise ValueError("im_idx must hold whole frame numbers (no NaN, inf or fractions)")
    if bool((values < 0).any()):
        raise ValueError(f"im_idx must be >= 0, got a minimum of {values.min().item():g}")
    if values.shape[0] > 1:
        drops = torch.nonzero(values[1:] < values[:-1]).flatten()
        if drops.numel():
            i = int(drops[0])
            raise ValueError(f"im_idx must be sorted (non-decreasing): im_idx[{i + 1}] = {values[i + 1].item():g} "
                             f"follows im_idx[{i}] = {values[i].item():g}")


def slot_order(layout: FrameLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows regrouped by slot (slot 0 of every frame, then slot 1, ...; frames ascending inside).

    Returns ``(order [N], slot_offsets [l + 1])``: ``rows[order]`` is the slot-major sequence and
    ``slot_offsets`` its CSR by slot. This is the grouping the published tail encoder attends over.
    """
    key = layout.slot * layout.num_frames + layout.frame
    order = torch.argsort(key)
    slots = torch.arange(layout.most + 1, device=key.device)
    slot_offsets = torch.searchsorted(layout.slot[order], slots)
    return order, slot_offsets
