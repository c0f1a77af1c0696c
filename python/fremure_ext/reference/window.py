"""Pure-PyTorch window_pack / window_unpack, computed the way the published transformer does it:
one Python iteration per window that selects the window's rows with a frame mask and writes them
into a zero-initialised (padded) tensor, and masked scatters back onto the rows.

Besides the two op references (same signatures as :mod:`fremure_ext.ops.window`), this module
rebuilds the published tensors themselves for the tests: the frame packing ``[l, b, D]`` with its
padding mask, the window-2 global input ``[2l, b-1, D]`` with its position embedding and frame
index, and the "latter" / "both" scatters.
"""

from __future__ import annotations

import torch

__all__ = ["window_pack", "window_unpack"]


def _window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, num_frames - window + 1, stride))
    if starts and starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


def window_pack(x: torch.Tensor, frame_offsets: torch.Tensor, window: int, stride: int = 1,
                padded: bool = False):
    """Reference of :func:`fremure_ext.window_pack`; returns ``(out, src_index, position, window_offsets)``."""
    num_frames = frame_offsets.shape[0] - 1
    counts = frame_offsets.diff()
    frame_of_row = torch.repeat_interleave(torch.arange(num_frames, device=x.device), counts)
    row_ids = torch.arange(x.shape[0], device=x.device)
    most = int(counts.max()) if num_frames > 0 else 0
    starts = _window_starts(num_frames, window, stride)
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


# ---------------------------------------------------------------------------------------------
# The published tensors (sequence-first, as the published transformer builds them).


def published_frame_pack(features: torch.Tensor, im_idx: torch.Tensor):
    """Frame packing of the local branch: ``(rel_input [l, b, D], masks [b, l])``, True = padding.

    ``b = im_idx[-1] + 1`` and ``l`` = the count of the most frequent frame, as published.
    """
    frames = int(im_idx[-1]) + 1
    most = int((im_idx == torch.mode(im_idx)[0]).sum())
    rel_input = features.new_zeros(most, frames, features.shape[1])
    masks = torch.zeros(frames, most, dtype=torch.bool, device=features.device)
    for f in range(frames):
        here = im_idx == f
        n = int(here.sum())
        rel_input[:n, f] = features[here]
        masks[f, n:] = True
    return rel_input, masks


def published_global_input(features: torch.Tensor, im_idx: torch.Tensor, position_table: torch.Tensor):
    """Window-2 global input: ``(global_input [2l, b-1, D], position_embed [2l, b-1, D],
    idx [2l, b-1] frame of each slot (-1 padding), global_masks [b-1, 2l])``."""
    frames = int(im_idx[-1]) + 1
    most = int((im_idx == torch.mode(im_idx)[0]).sum())
    dim = features.shape[1]
    global_input = features.new_zeros(2 * most, frames - 1, dim)
    position_embed = features.new_zeros(2 * most, frames - 1, dim)
    idx = torch.full((2 * most, frames - 1), -1, dtype=torch.long, device=features.device)
    for j in range(frames - 1):
        pair = (im_idx == j) | (im_idx == j + 1)
        n_pair, n_first = int(pair.sum()), int((im_idx == j).sum())
        global_input[:n_pair, j] = features[pair]
        idx[:n_pair, j] = im_idx[pair]
        position_embed[:n_first, j] = position_table[0]
        position_embed[n_first:n_pair, j] = position_table[1]
    global_masks = (global_input.reshape(-1, dim).sum(1) == 0).reshape(2 * most, frames - 1).t()
    return global_input, position_embed, idx, global_masks


def published_global_scatter(global_output: torch.Tensor, idx: torch.Tensor, im_idx: torch.Tensor, num_rows: int,
                             mode: str) -> torch.Tensor:
    """Scatter of the window-2 decoder output ``[2l, b-1, D]`` back to ``[N, D]``, "latter" or "both"."""
    frames = int(im_idx[-1]) + 1 if im_idx.numel() else 0
    output = global_output.new_zeros(num_rows, global_output.shape[-1])
    for j in range(frames - 1):
        if j == 0:
            output[im_idx == 0] = global_output[:, 0][idx[:, 0] == 0]
        from_this = global_output[:, j][idx[:, j] == j + 1]
        if mode == "latter" or j == frames - 2:
            output[im_idx == j + 1] = from_this
        else:
            output[im_idx == j + 1] = (from_this + global_output[:, j + 1][idx[:, j + 1] == j + 1]) / 2
    return output
