"""Pure-PyTorch window_pack / window_unpack, computed the way the published transformer does it:
one Python iteration per window that selects the window's rows with a frame mask and writes them
into a zero-initialised (padded) tensor, and masked scatters back onto the rows.
"""

from __future__ import annotations

import torch

__all__ = ["window_count", "window_pack", "window_starts", "window_unpack"]


def window_count(num_frames: int, window: int, stride: int) -> int:
    """Number of windows over ``num_frames`` frames: ``0, stride, ...`` while a window fits, plus
    one ending at the last frame when the last regular window stops short of it; 0 when fewer
    than ``window`` frames. The one statement of the rule in Python (C++: csrc/common/window.h)."""
    if num_frames < window:
        return 0
    regular = (num_frames - window) // stride + 1
    return regular + 1 if (regular - 1) * stride + window < num_frames else regular


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """First frame of every window (see :func:`window_count`)."""
    return [min(w * stride, num_frames - window) for w in range(window_count(num_frames, window, stride))]


def window_pack(x: torch.Tensor, frame_offsets: torch.Tensor, window: int, stride: int = 1,
                padded: bool = False):
    """Reference of :func:`fremure_ext.window_pack`; returns ``(out, src_index, position, window_offsets)``."""
    num_frames = frame_offsets.shape[0] - 1
    counts = frame_offsets.diff()
    frame_of_row = torch.repeat_interleave(torch.arange(num_frames, device=x.device), counts)
    row_ids = torch.arange(x.shape[0], device=x.device)
    most = int(counts.max()) if num_frames > 0 else 0
    starts = window_starts(num_frames, window, stride)
    sizes = [0]
    if padded:
        slots = window * most
        out = x.new_zeros(len(starts), slots, x.shape[1])
        src_index = torch.full((len(starts), slots), -1, dtype=torch.long, device=x.device)
        position = torch.full((len(starts), slots), -1, dtype=torch.long, device=x.device)
    else:
        pieces, src_pieces, pos_pieces = [], [], []
    for w, first in enumerate(starts):
        in_window = (frame_of_row >= first) & (frame_of_row < first + window)
        n = int(in_window.sum())
        sizes.append(n)
        if padded:
            out[w, :n] = x[in_window]
            src_index[w, :n] = row_ids[in_window]
            position[w, :n] = frame_of_row[in_window] - first
        else:
            pieces.append(x[in_window])
            src_pieces.append(row_ids[in_window])
            pos_pieces.append(frame_of_row[in_window] - first)
    if not padded:
        out = torch.cat(pieces) if pieces else x[:0]
        src_index = torch.cat(src_pieces) if src_pieces else torch.zeros(0, dtype=torch.long, device=x.device)
        position = torch.cat(pos_pieces) if pos_pieces else torch.zeros(0, dtype=torch.long, device=x.device)
    window_offsets = torch.tensor(sizes, dtype=torch.long, device=x.device).cumsum(0)
    return out, src_index, position, window_offsets


def window_unpack(y: torch.Tensor, src_index: torch.Tensor, weights: torch.Tensor | None, num_rows: int,
                  mode: str = "latter") -> torch.Tensor:
    """Reference of :func:`fremure_ext.window_unpack`.

    The packed rows are walked in order in runs of strictly increasing source rows (one window
    each for window_pack's output); a run holds a row at most once, so each run is one masked
    scatter, as the published loop does per window.
    """
    dim = y.shape[-1]
    flat_y = y.reshape(-1, dim)
    flat_src = src_index.reshape(-1)
    real = flat_src >= 0
    flat_y, flat_src = flat_y[real], flat_src[real]
    flat_w = weights.reshape(-1)[real] if mode == "weighted" else None
    breaks = (torch.nonzero(flat_src[1:] <= flat_src[:-1]).flatten() + 1).tolist()
    bounds = [0, *breaks, flat_src.shape[0]]
    runs = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    out = y.new_zeros(num_rows, dim)
    if mode == "latter":
        taken = torch.zeros(num_rows, dtype=torch.bool, device=y.device)
        for a, b in runs:
            rows = flat_src[a:b]
            fresh = ~taken[rows]
            out[rows[fresh]] = flat_y[a:b][fresh]
            taken[rows] = True
        return out
    if mode not in ("mean", "weighted", "sum"):
        raise ValueError(f"mode must be one of 'latter', 'mean', 'weighted', 'sum', got {mode!r}")
    total = y.new_zeros(num_rows)
    for a, b in runs:
        rows = flat_src[a:b]
        w = flat_w[a:b] if flat_w is not None else torch.ones(b - a, dtype=y.dtype, device=y.device)
        out = out.index_add(0, rows, flat_y[a:b] * w[:, None])
        total = total.index_add(0, rows, w)
    if mode == "sum":
        return out
    has = total > 0
    return torch.where(has[:, None], out / torch.where(has, total, torch.ones_like(total))[:, None], 0.0)
