"""The published computation on the model's parameters (zero-padded sequence-first batches through
``nn.MultiheadAttention``, one relation type at a time), for checkpoint parity with the published
code and as the baseline of ``benchmarks/bench_model.py``. The model computes the same function on
packed tokens; the layout steps here are :mod:`fremure_ext.reference` functions.

    model = to_published(FReMuRe(...))          # same parameters, published computation
    with fremure_ext.dispatch.use_kernels("reference"):
        out = model(entry, "test")               # heads on their plain-PyTorch references too
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fremure_ext import reference

from .glocal import _UNPACK_MODE, FUSION_HI, FUSION_LO, FUSION_TEMPERATURE, GlocalTransformer, TransformerOutput
from .layout import FrameLayout
from .objects import ObjectClassifier
from .tracking import TrackLayout, check_track_lengths, track_layout


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

    def _memory_read(self, mha: nn.MultiheadAttention, feat: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """The published call: sequence-first ``mha(feat[:, None], bank[:, None], bank[:, None])``."""
        out, _ = mha(feat.unsqueeze(1), bank.unsqueeze(1), bank.unsqueeze(1))
        return out.squeeze(1)

    def _run(self, features, layout: FrameLayout, bank, requests) -> list[TransformerOutput]:
        return [self._run_one(features, layout, bank, rel_type, freq) for rel_type, freq in requests]

    def _run_one(self, features, layout: FrameLayout, bank, rel_type, freq) -> TransformerOutput:
        n = features.shape[0]
        # frames as windows of one frame: [b, l, D] batch-first, padding where src_index < 0
        frames, frame_src, _, _ = reference.window_pack(features, layout.offsets, 1, 1, padded=True)
        rel_input = frames.transpose(0, 1).contiguous()                        # [l, b, D] as published
        masks = frame_src < 0                                                   # [b, l]
        x = rel_input
        for layer in self.local_attention.layers:
            x = layer(x, masks)
        local = reference.window_unpack(x.transpose(0, 1), frame_src, None, n, "latter")
        if freq is not None:
            tail = self.local_attention_tail(rel_input, masks)
            gate = self.local_attention_tail.freq_gate(freq, rel_type).to(tail.dtype)
            tail = reference.freq_gate_blend(tail, gate, ~masks.T)
            tail = reference.window_unpack(tail.transpose(0, 1), frame_src, None, n, "latter")
            linear = self.fusion_gate_local[0]
            local = reference.gated_fusion(local, tail, self.freq_mapper[rel_type](freq), linear.weight, linear.bias,
                                           FUSION_TEMPERATURE, FUSION_LO, FUSION_HI)
        early = self.mem_compute is not None and self.mem_fusion == "early"
        decoder_in = self._hallucinate(local, bank) if early else local
        global_out = self._global_padded(decoder_in, layout)
        if early:
            return TransformerOutput(global_out, local, decoder_in)
        return self._finish(local, global_out, bank)

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
            y = layer(y, masks, pos)
        weights = self._window_weights(position.clamp_min(0))
        if weights is not None:
            weights = weights.to(y.dtype)
        return reference.window_unpack(y.transpose(0, 1), src, weights, n, _UNPACK_MODE[self.mode])


class PublishedObjectClassifier(ObjectClassifier):
    """:class:`ObjectClassifier` whose tracking encoder runs as published (one zero-padded batch)."""

    def _track(self, entry: dict, feat: torch.Tensor) -> torch.Tensor:
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


__all__ = ["PublishedObjectClassifier", "PublishedTransformer", "encode_tracks_padded", "to_published"]
