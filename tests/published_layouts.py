"""The published transformer's tensors, rebuilt literally for the tests and benchmarks (sequence-first,
as the published code builds them): the frame packing ``[l, b, D]`` with its padding mask, the
window-2 global input ``[2l, b-1, D]`` with its position embedding and frame index, and the
"latter" / "both" scatters. window_pack / window_unpack must reproduce them."""

from __future__ import annotations

import torch

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
