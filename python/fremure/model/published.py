"""The published computation on the model's parameters (zero-padded sequence-first batches through
``nn.MultiheadAttention``, one relation type at a time), for checkpoint parity with the published
code and as the baseline of ``benchmarks/bench_model.py``. The model computes the same function on
packed tokens; the layout steps here are :mod:`fremure_ext.reference` functions.

    model = to_published(FReMuRe(...))          # same parameters, published computation
    with fremure_ext.dispatch.use_kernels("reference"):
        out = model(entry, "test")               # heads on their plain-PyTorch references too
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from fremure_ext import reference

from .glocal import GlocalTransformer, TransformerOutput
from .layers import DecoderLayer, EncoderLayer, post_norm_block
from .layout import FrameLayout
from .objects import ObjectClassifier
from .tracking import TrackLayout, check_track_lengths, track_layout


def memory_read_padded(mha: nn.MultiheadAttention, feat: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The published memory read ``mha(feat[:, None], bank[:, None], bank[:, None])``, ``[N, D]`` out."""
    out, _ = mha(feat.unsqueeze(1), bank.unsqueeze(1), bank.unsqueeze(1))
    return out.squeeze(1)


def encoder_layer_padded(layer: EncoderLayer, src: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """The published encoder layer: src ``[L, B, D]``, key_padding_mask bool ``[B, L]`` -> ``[L, B, D]``."""
    attended, _ = layer.self_attn(src, src, src, key_padding_mask=key_padding_mask)
    return post_norm_block(layer, src, attended)


def decoder_layer_padded(layer: DecoderLayer, x: torch.Tensor, key_padding_mask: torch.Tensor,
                         position: torch.Tensor) -> torch.Tensor:
    """The published decoder layer: x, position ``[L, W, D]``, key_padding_mask ``[W, L]`` -> ``[L, W, D]``."""
    keyed = x + position
    attended, _ = layer.multihead2(query=keyed, key=keyed, value=x, key_padding_mask=key_padding_mask)
    return layer.after_attention(x, attended)


class PublishedTransformer(GlocalTransformer):
    """:class:`GlocalTransformer` computed as published (per relation type, padded layouts).

    Args: those of :class:`GlocalTransformer`, plus
        zero_sum_padding: the published padding rule of the temporal decoder, where a row whose
            features sum to exactly 0 counts as padding (no query attends to it; docs/ag_and_eval.md Q-M2).
            False: explicit padding masks, as the packed computation always uses: whether a sum
            of D rounded values is exactly 0 depends on the rounding of the computation that
            produced them, so no other computation can reproduce the rule row for row. It
            matters in practice only while the LayerNorm affine parameters are at their initial
            values (the no-frequency path feeds LayerNorm outputs, which sum to ~0, straight into
            the decoder); the two computations then differ on the affected rows.
    """

    def __init__(self, *args, zero_sum_padding: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.zero_sum_padding = zero_sum_padding

    def passes(self, features: torch.Tensor, im_idx: torch.Tensor, memory: Mapping[str, torch.Tensor] | None,
               requests: Sequence[tuple[str | None, torch.Tensor | None]]) -> list[TransformerOutput]:
        """As :meth:`GlocalTransformer.passes`, one published pass per request."""
        layout, bank, requests = self.check_inputs(features, im_idx, memory, requests)
        return [self.published_pass(features, layout, bank, rel_type, freq) for rel_type, freq in requests]

    def published_pass(self, features: torch.Tensor, layout: FrameLayout, bank: dict[str, torch.Tensor] | None,
                       rel_type: str | None, freq: torch.Tensor | None) -> TransformerOutput:
        """One relation type's published pass over checked inputs (see :meth:`GlocalTransformer.check_inputs`)."""
        n = features.shape[0]
        # frames as windows of one frame: [b, l, D] batch-first, padding where src_index < 0
        frames, frame_src, _, _ = reference.window_pack(features, layout.offsets, 1, 1, padded=True)
        rel_input = frames.transpose(0, 1).contiguous()                        # [l, b, D] as published
        masks = frame_src < 0                                                   # [b, l]
        x = rel_input
        for layer in self.local_attention.layers:
            x = encoder_layer_padded(layer, x, masks)
        local = reference.window_unpack(x.transpose(0, 1), frame_src, None, n, "latter")
        if freq is not None:
            tail = self.local_attention_tail.encoder(rel_input, src_key_padding_mask=masks.T)  # as published
            gate = self.local_attention_tail.freq_gate(freq, rel_type).to(tail.dtype)
            tail = reference.freq_gate_blend(tail, gate, ~masks.T)
            tail = reference.window_unpack(tail.transpose(0, 1), frame_src, None, n, "latter")
            local = self.fusion_gate_local(local, tail, self.freq_mapper[rel_type](freq), fusion=reference.gated_fusion)
        early = self.mem_compute is not None and self.mem_fusion == "early"
        decoder_in = self.hallucinate(local, bank, memory_read_padded) if early else local
        return self.assemble(local, decoder_in, self._global_padded(decoder_in, layout), bank, memory_read_padded)

    def _global_padded(self, z: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
        n, dim = z.shape
        windows, src, position, _ = reference.window_pack(z, layout.offsets, self.window, self.stride, padded=True)
        if windows.shape[0] == 0:
            return torch.zeros_like(z).detach()  # the published output of a too-short video: all zeros
        real = src >= 0                                                         # [W, L]
        global_input = windows.transpose(0, 1).contiguous()                     # [L, W, D]
        table = self.position_embedding.weight.to(z.dtype)
        pos = torch.where(real[..., None], table[position.clamp_min(0)], 0.0).transpose(0, 1).contiguous()
        if self.zero_sum_padding:
            # Published padding rule: a row is padding when its features sum to exactly 0.
            masks = (global_input.reshape(-1, dim).sum(dim=1) == 0).view(real.shape[1], real.shape[0]).T
        else:
            masks = ~real
        y = global_input
        for layer in self.global_attention.layers:
            y = decoder_layer_padded(layer, y, masks, pos)
        return self.merge_windows(y.transpose(0, 1), src, position.clamp_min(0), n, unpack=reference.window_unpack)


class PublishedObjectClassifier(ObjectClassifier):
    """:class:`ObjectClassifier` whose tracking encoder runs as published (one zero-padded batch)."""

    def track(self, entry: dict, feat: torch.Tensor) -> torch.Tensor:
        """The published tracking call (see :meth:`ObjectClassifier.track`)."""
        layout = track_layout(entry["distribution"].argmax(dim=1), entry["boxes"][:, 0].long())
        return encode_tracks_padded(self.encoder_tran, self.positional_encoder, feat, layout)


def encode_tracks_padded(encoder: nn.TransformerEncoder, positional: nn.Module, x: torch.Tensor,
                         layout: TrackLayout) -> torch.Tensor:
    """The published tracking call: the tracks of ``x [N, D]`` as one zero-padded ``[G, L, D]``
    batch through ``encoder`` (key-padding masks, padding at position 0); ``[N, D]`` in x's order."""
    if x.shape[0] == 0:
        return x
    check_track_lengths(layout, positional)
    tokens = x.index_select(0, layout.order)
    tracks = layout.offsets.shape[0] - 1
    index = (layout.track, layout.slot)
    padded = x.new_zeros(tracks, layout.longest, x.shape[1]).index_put(index, tokens)
    position = layout.position.new_zeros(tracks, layout.longest).index_put(index, layout.position)
    mask = torch.ones(tracks, layout.longest, dtype=torch.bool, device=x.device).index_put(
        index, torch.zeros((), dtype=torch.bool, device=x.device))
    h = encoder(positional(padded, position), src_key_padding_mask=mask)[index]
    return torch.empty_like(h).index_copy(0, layout.order, h)


_PUBLISHED = {GlocalTransformer: PublishedTransformer, ObjectClassifier: PublishedObjectClassifier}


def to_published(model: nn.Module, zero_sum_padding: bool = True) -> nn.Module:
    """Switches ``model`` (a FReMuRe, GlocalTransformer or ObjectClassifier, or anything holding
    them) in place to the published computation; parameters and state-dict keys are unchanged.
    Returns ``model``."""
    for module in model.modules():
        published = _PUBLISHED.get(type(module))
        if published is not None:
            module.__class__ = published
        if isinstance(module, PublishedTransformer):
            module.zero_sum_padding = zero_sum_padding
    return model


__all__ = ["PublishedObjectClassifier", "PublishedTransformer", "decoder_layer_padded", "encode_tracks_padded",
           "encoder_layer_padded", "memory_read_padded", "to_published"]
