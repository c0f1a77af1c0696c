"""Object tracking encoder of the published ``tracking=True`` option (SGCls/SGDet).

The boxes of a video are grouped by the detector's predicted class (one "track" per class, across
all frames); a 3-layer transformer encoder runs over every track with a sinusoidal position
encoding of the frame rank inside the track (0 for the track's earliest frame, 1 for the next
frame that has a member, ...), and each box takes its own output row. A class seen once is a
one-box track (the published code runs those as separate length-1 sequences, which is the same
computation). Every track of a video is handled in one batch: one padded ``[G, L, D]`` tensor
with key-padding masks (the published module call) or packed tokens with segment attention.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn

from .layers import post_norm_layer_packed

TRACK_LAYERS = 3
TRACK_HEADS = 8
TRACK_FFN = 1024
TRACK_DROPOUT = 0.1
MAX_POSITIONS = {"sgdet": 600, "sgcls": 400, "predcls": 400}   # published table lengths per mode


class FramePositionalEncoding(nn.Module):
    """``x + pe[position]`` then dropout; ``pe`` ``[1, max_len, D]`` is the standard sinusoidal
    table (sin on even channels, cos on odd), a persistent buffer as published."""

    def __init__(self, d_model: int, dropout: float = TRACK_DROPOUT, max_len: int = 400):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"d_model must be even for the sinusoidal table, got {d_model}")
        self.dropout = nn.Dropout(p=dropout)
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(1, max_len, d_model)
        pe[0, :, 0::2] = torch.sin(position * frequency)
        pe[0, :, 1::2] = torch.cos(position * frequency)
        self.register_buffer("pe", pe)

    @property
    def max_len(self) -> int:
        return self.pe.shape[1]

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """x: ``[..., D]``; position: int64 of x's shape without D, values in ``[0, max_len)``."""
        table = self.pe[0].to(x.dtype)
        return self.dropout(x + table.index_select(0, position.reshape(-1)).view_as(x))


def build_track_encoder(d_model: int) -> nn.TransformerEncoder:
    """The published ``encoder_tran``: 3 post-norm ReLU layers, 8 heads, FFN 1024, dropout 0.1,
    batch-first."""
    layer = nn.TransformerEncoderLayer(d_model=d_model, nhead=TRACK_HEADS, dim_feedforward=TRACK_FFN,
                                       dropout=TRACK_DROPOUT, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=TRACK_LAYERS, enable_nested_tensor=False)


class TrackLayout(NamedTuple):
    """Boxes regrouped by track (all int64 on the boxes' device).

    order: ``[N]`` rows in track order (tracks by ascending class, frames ascending inside);
    offsets: ``[G + 1]`` CSR of the tracks in ``order``; track / slot / position: ``[N]`` for
    ``order[i]``: its track, its place in the track and its frame rank in the track; longest: L.
    """

    order: torch.Tensor
    offsets: torch.Tensor
    track: torch.Tensor
    slot: torch.Tensor
    position: torch.Tensor
    longest: int


def track_layout(labels: torch.Tensor, frame: torch.Tensor) -> TrackLayout:
    """Groups boxes into tracks by ``labels [N]`` (int64 class of each box) with ``frame [N]``
    (int64 frame of each box, >= 0). The published ``get_sequence`` + position computation;
    the rows of each track keep their relative order."""
    n = labels.shape[0]
    device = labels.device
    frames = int(frame.max()) + 1 if n else 1
    key = labels * frames + frame
    order = torch.argsort(key, stable=True)
    sorted_labels, sorted_key = labels[order], key[order]
    first_in_track = torch.ones(n, dtype=torch.bool, device=device)
    first_in_track[1:] = sorted_labels[1:] != sorted_labels[:-1]
    new_frame = torch.ones(n, dtype=torch.bool, device=device)
    new_frame[1:] = sorted_key[1:] != sorted_key[:-1]
    track = torch.cumsum(first_in_track, 0) - 1
    starts = torch.nonzero(first_in_track).flatten()
    offsets = torch.cat([starts, starts.new_tensor([n])])
    slot = torch.arange(n, device=device) - starts[track]
    frame_rank = torch.cumsum(new_frame, 0)
    position = frame_rank - frame_rank[starts][track]
    longest = int(offsets.diff().max()) if n else 0
    return TrackLayout(order, offsets, track, slot, position, longest)


def check_track_lengths(layout: TrackLayout, positional: FramePositionalEncoding) -> None:
    """ValueError when a track spans more frames than the position table holds."""
    if not torch.compiler.is_compiling() and int(layout.position.max()) >= positional.max_len:
        raise ValueError(f"a track spans {int(layout.position.max()) + 1} frames; the position table holds "
                         f"{positional.max_len}")


def encode_tracks(encoder: nn.TransformerEncoder, positional: FramePositionalEncoding, x: torch.Tensor,
                  layout: TrackLayout) -> torch.Tensor:
    """Runs ``encoder`` over every track of ``x [N, D]`` and returns ``[N, D]`` in x's row order:
    the tracks' tokens back to back with attention restricted to each track (no padding computed).
    The published zero-padded batch is :func:`fremure.model.published.encode_tracks_padded`.
    """
    if x.shape[0] == 0:
        return x
    check_track_lengths(layout, positional)
    h = positional(x.index_select(0, layout.order), layout.position)
    for layer in encoder.layers:
        h = post_norm_layer_packed(layer, h, layout.offsets)
    if encoder.norm is not None:
        h = encoder.norm(h)
    return torch.empty_like(h).index_copy(0, layout.order, h)
