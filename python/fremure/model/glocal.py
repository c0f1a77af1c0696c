"""The glocal transformer of FReMuRe (docs/method.md section 3), with the published parameter layout.

The computation runs on packed tokens through the fremure ops (window_pack/window_unpack,
segment_attention, freq_gate_blend, gated_fusion), which choose between their compiled kernels and
their plain-PyTorch references (:mod:`fremure_ext.dispatch`). The published computation (zero-padded
frame and window layouts, ``nn.MultiheadAttention``, feature-sum padding masks) is
:class:`fremure.model.published.PublishedTransformer`, same parameters and same numbers.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import fremure_ext

from ..relations import NAMES, relation_type
from .config import CHOICES
from .layers import (REL_CLASSES, DecoderLayer, EncoderLayer, FrequencyAwareDecoder, FrequencyAwareEncoder,
                     FusionGate, LayerStack)
from .layout import FrameLayout, frame_layout, slot_order

MEMORY_TYPES = NAMES                                             # order of the joint memory bank
SEPARATE_MEMORY_ORDER = ("attention", "contacting", "spatial")  # published order of the per-type banks
FREQ_EMBED = 64
UNPACK_MODES = {"latter": "latter", "both": "mean", "mean": "mean", "weighted": "weighted"}  # window_unpack's, per mode
MODES = tuple(UNPACK_MODES)


class TransformerOutput(NamedTuple):
    """``output`` ``[N, D]`` goes to the relation heads; ``local_output`` and ``mem_features``
    follow the published return convention (see :meth:`GlocalTransformer.forward`)."""

    output: torch.Tensor
    local_output: torch.Tensor
    mem_features: torch.Tensor


def memory_read(mha: nn.MultiheadAttention, feat: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """One-head, bias-free attention of every row of ``feat [N, D]`` over ``bank [M, D]`` -> ``[N, D]``."""
    dim = feat.shape[1]
    w_q, w_k, w_v = mha.in_proj_weight.split(dim)
    scores = (F.linear(feat, w_q) / math.sqrt(dim)) @ F.linear(bank, w_k).T
    return F.linear(torch.softmax(scores, dim=-1) @ F.linear(bank, w_v), mha.out_proj.weight)


class GlocalTransformer(nn.Module):
    """Local (per-frame) + tail (per-slot, frequency-gated) encoders, gated fusion, windowed
    temporal decoder and TEMPURA memory; the published ``transformer`` module.

    Args: the published ones (the tail encoder keeps torch's FFN width 2048, as published) and
        ModelConfig's options under their published names: mode (``window_mode``; "both" is
        "mean" of the windows holding a frame, "weighted" learns ``window_weight``), mem_compute
        (``rel_mem_compute``, None for none; "joint" attends over all 26 prototypes, "seperate"
        per relation type, averaged), mem_fusion, selection, selection_lambda, window, stride,
        gate, keep_unused (build ``global_attention_tail`` and ``fusion_gate_global``, which the
        published forward never uses but its checkpoints contain) and frequency_branch (build the
        tail branch: ``local_attention_tail``, ``fusion_gate_*``, ``freq_mapper``; False leaves
        STTran's transformer, spatial encoder, temporal decoder and frame position embedding,
        which refuses requests with ``freq``).

    Padding of the temporal decoder is explicit (see ``zero_sum_padding`` of
    :class:`~fremure.model.published.PublishedTransformer` for the published rule).
    """

    def __init__(self, embed_dim: int = 1936, nhead: int = 8, dim_feedforward: int = 2048, enc_layer_num: int = 1,
                 dec_layer_num: int = 3, dropout: float = 0.1, mode: str = "latter", mem_compute: str | None = None,
                 mem_fusion: str = "late", selection: str = "manual", selection_lambda: float = 0.5,
                 window: int = 2, stride: int = 1, gate: str = "stats", keep_unused: bool = True,
                 frequency_branch: bool = True):
        super().__init__()
        _check_config(embed_dim, nhead, mode, mem_compute, mem_fusion, selection, window, stride)
        self.embed_dim, self.mode, self.window, self.stride = embed_dim, mode, window, stride
        self.mem_compute = "joint" if mem_compute is True else mem_compute
        self.mem_fusion, self.selection, self.selection_lambda = mem_fusion, selection, float(selection_lambda)

        self.frequency_branch = bool(frequency_branch)
        self.local_attention = LayerStack(EncoderLayer(embed_dim, nhead, dim_feedforward, dropout), enc_layer_num)
        if self.frequency_branch:
            self.local_attention_tail = FrequencyAwareEncoder(embed_dim, nhead, enc_layer_num, dropout=dropout,
                                                              gate=gate)
        if self.mem_compute == "seperate":
            self.mem_attention = nn.ModuleDict({r: nn.MultiheadAttention(embed_dim, 1, 0.0, bias=False)
                                                for r in SEPARATE_MEMORY_ORDER})
        elif self.mem_compute == "joint":
            self.mem_attention = nn.MultiheadAttention(embed_dim, 1, 0.0, bias=False)
        if self.mem_compute is not None and selection == "automated":
            self.selector = nn.Linear(embed_dim, 1)
        self.global_attention = LayerStack(DecoderLayer(embed_dim, nhead, dim_feedforward, dropout), dec_layer_num)
        if keep_unused and self.frequency_branch:
            self.global_attention_tail = FrequencyAwareDecoder(embed_dim, nhead, dec_layer_num, dropout=dropout)
        self.position_embedding = nn.Embedding(window, embed_dim)
        nn.init.uniform_(self.position_embedding.weight)
        if mode == "weighted":
            self.window_weight = nn.Parameter(torch.zeros(window))
        if self.frequency_branch:
            self.fusion_gate_local = FusionGate(embed_dim, FREQ_EMBED)
            if keep_unused:
                self.fusion_gate_global = FusionGate(embed_dim, FREQ_EMBED)
            self.freq_mapper = nn.ModuleDict({r: nn.Linear(c, FREQ_EMBED) for r, c in REL_CLASSES.items()})

    # ------------------------------------------------------------------ public API

    def forward(self, features: torch.Tensor, im_idx: torch.Tensor, memory: Mapping[str, torch.Tensor] | None = None,
                rel_type: str | None = None, freq: torch.Tensor | None = None) -> TransformerOutput:
        """One relation type's pass over a video.

        Args:
            features: ``[N, D]`` float relation features, rows sorted by frame.
            im_idx: ``[N]`` frame of each row (float or integer), non-decreasing.
            memory: None/empty, or prototypes ``{"attention": [3, D], "spatial": [6, D],
                "contacting": [17, D]}`` (used when ``mem_compute`` is set).
            rel_type: "attention" | "spatial" | "contact" ("contacting" accepted); needed with ``freq``.
            freq: ``[C_r]`` class frequencies of ``rel_type``; None switches the tail branch off.

        Returns:
            :class:`TransformerOutput` ``(output, local_output, mem_features)``, each ``[N, D]``:
            without memory ``(global, Z_loc, Z_loc)``; late fusion ``(fused global, global,
            fused global)``; early fusion ``(global, Z_loc, fused Z_loc)`` (docs/method.md 3.6).
        """
        return self.passes(features, im_idx, memory, [(rel_type, freq)])[0]

    def forward_types(self, features: torch.Tensor, im_idx: torch.Tensor, memory: Mapping[str, torch.Tensor] | None,
                      freqs: Mapping[str, torch.Tensor]) -> dict[str, TransformerOutput]:
        """Several relation types' passes over one video; ``freqs`` maps each rel_type to its
        ``[C_r]`` frequencies. Results are keyed by the published key ('contacting' -> 'contact')."""
        keys = [relation_type(r).key for r in freqs]
        return dict(zip(keys, self.passes(features, im_idx, memory, list(freqs.items()))))

    def passes(self, features: torch.Tensor, im_idx: torch.Tensor, memory: Mapping[str, torch.Tensor] | None,
               requests: Sequence[tuple[str | None, torch.Tensor | None]]) -> list[TransformerOutput]:
        """One :class:`TransformerOutput` per ``(rel_type, freq)`` request (as in :meth:`forward`),
        in order. The local and tail encoders run once for all requests (they do not depend on the
        type) and the temporal decoders run as one batch; the published per-type computation
        (:mod:`fremure.model.published`) gives the same numbers in eval mode or with dropout 0."""
        layout, bank, requests = self.check_inputs(features, im_idx, memory, requests)
        n = features.shape[0]
        head = features
        for layer in self.local_attention.layers:
            head = layer(head, layout.offsets)
        tail = self._tail(features, layout) if any(f is not None for _, f in requests) else None
        locals_ = [head if freq is None else self._fuse(head, tail, rel_type, freq, features.dtype)
                   for rel_type, freq in requests]
        stacked = torch.cat(locals_) if len(locals_) > 1 else locals_[0]
        early = self.mem_compute is not None and self.mem_fusion == "early"
        decoder_in = self.hallucinate(stacked, bank) if early else stacked
        global_out = self._global(decoder_in, layout, len(requests))
        rows = [slice(r * n, (r + 1) * n) for r in range(len(requests))]
        return [self.assemble(stacked[r], decoder_in[r], global_out[r], bank) for r in rows]

    # ------------------------------------------------------------------ input checks

    def check_inputs(self, features: torch.Tensor, im_idx: torch.Tensor, memory: Mapping[str, torch.Tensor] | None,
                     requests: Sequence[tuple[str | None, torch.Tensor | None]]):
        """Boundary checks of :meth:`passes`' arguments. Returns ``(layout, bank, requests)``: the
        frame layout, the memory bank (None when unused or empty) and the requests with published
        keys and freq on the features' device."""
        _check_features(features, self.embed_dim)
        layout = frame_layout(im_idx, features.shape[0], features.device)
        checked = [self._check_request(r, f, features) for r, f in requests]
        return layout, self._check_memory(memory, features), checked

    def _check_request(self, rel_type, freq, features):
        rel_type = None if rel_type is None else relation_type(rel_type).key   # 'contacting' -> 'contact'
        if freq is None:
            return rel_type, None
        if not self.frequency_branch:
            raise ValueError("freq must be None: this transformer was built without the frequency branch "
                             "(frequency_branch=False, the STTran transformer)")
        if rel_type not in self.freq_mapper:
            raise ValueError(f"rel_type must be one of {list(self.freq_mapper)} when freq is given, got {rel_type!r}")
        if not isinstance(freq, torch.Tensor):
            raise TypeError(f"freq for {rel_type!r} must be a torch.Tensor, got {type(freq).__name__}")
        classes = self.freq_mapper[rel_type].in_features
        if freq.shape != (classes,):
            raise ValueError(f"freq for {rel_type!r} must have shape [{classes}] (one value per class), "
                             f"got {tuple(freq.shape)}")
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(freq).all()):
            raise ValueError(f"freq for {rel_type!r} contains NaN or inf")
        return rel_type, freq.to(device=features.device, dtype=self.freq_mapper[rel_type].weight.dtype)

    def _check_memory(self, memory, features) -> dict[str, torch.Tensor] | None:
        if self.mem_compute is None or memory is None or len(memory) == 0:
            return None
        if not isinstance(memory, Mapping):
            raise TypeError(f"memory must be a dict of prototypes {MEMORY_TYPES}, got {type(memory).__name__}")
        if set(memory) != set(MEMORY_TYPES):
            raise ValueError(f"memory must have the keys {MEMORY_TYPES}, got {sorted(memory)}")
        bank = {}
        for r in MEMORY_TYPES:
            m = memory[r]
            if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[1] != self.embed_dim:
                shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
                raise ValueError(f"memory[{r!r}] must be a [C, {self.embed_dim}] tensor, got {shape}")
            bank[r] = m.to(device=features.device, dtype=features.dtype)
        return bank

    # ------------------------------------------------------------------ pieces shared with the published computation

    def hallucinate(self, feat: torch.Tensor, bank: dict[str, torch.Tensor] | None, read=memory_read) -> torch.Tensor:
        """Memory read-out ``e * feat + (1 - e) * Attn(feat, M, M)`` of ``feat [N, D]`` (identity
        without memory); ``read(mha, feat, bank)`` computes one attention (:func:`memory_read`)."""
        if bank is None:
            return feat
        if self.mem_compute == "joint":
            out = read(self.mem_attention, feat, torch.cat([bank[r] for r in MEMORY_TYPES]))
        else:
            out = torch.stack([read(self.mem_attention[r], feat, bank[r]) for r in SEPARATE_MEMORY_ORDER], 1).mean(1)
        e = self.selection_lambda if self.selection == "manual" else self.selector(feat).sigmoid()
        return e * feat + (1 - e) * out

    def assemble(self, local: torch.Tensor, decoder_in: torch.Tensor, global_out: torch.Tensor, bank,
                 read=memory_read) -> TransformerOutput:
        """Published return convention of one pass (see :meth:`forward`) from ``Z_loc``, the
        temporal decoder's input and its output (each ``[N, D]``), with the late read-out."""
        if self.mem_compute is None:
            return TransformerOutput(global_out, local, local)
        if self.mem_fusion == "early":
            return TransformerOutput(global_out, local, decoder_in)
        fused = self.hallucinate(global_out, bank, read)
        return TransformerOutput(fused, global_out, fused)

    def merge_windows(self, y: torch.Tensor, src: torch.Tensor, position: torch.Tensor, num_rows: int,
                      unpack=fremure_ext.window_unpack) -> torch.Tensor:
        """Window tokens ``y`` back to ``[num_rows, D]`` rows as ``mode`` says (weights
        ``exp(window_weight)[position]`` in mode "weighted"); y, src, position packed (``[T, D]``,
        ``[T]``) or padded (``[W, L, D]``, ``[W, L]``, position >= 0); ``unpack``: the op or its reference."""
        weights = None
        if self.mode == "weighted":
            weights = torch.exp(self.window_weight).index_select(0, position.reshape(-1)).view(position.shape)
            weights = weights.to(y.dtype)
        return unpack(y, src, weights, num_rows, UNPACK_MODES[self.mode])

    # ------------------------------------------------------------------ packed computation

    def _fuse(self, head: torch.Tensor, tail: torch.Tensor, rel_type: str, freq: torch.Tensor, dtype) -> torch.Tensor:
        gate = self.local_attention_tail.freq_gate(freq, rel_type).to(dtype)
        return self.fusion_gate_local(head, fremure_ext.freq_gate_blend(tail, gate), self.freq_mapper[rel_type](freq))

    def _tail(self, features: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
        order, slot_offsets = slot_order(layout)
        grouped = self.local_attention_tail(features.index_select(0, order), slot_offsets)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.shape[0], device=order.device)
        return grouped.index_select(0, inverse)

    def _global(self, z: torch.Tensor, layout: FrameLayout, copies: int) -> torch.Tensor:
        """Temporal decoder over ``copies`` stacked copies ``[copies * N, D]`` of one video's rows
        (one per relation type), all windows of all copies in one packed batch."""
        n = z.shape[0] // copies
        packs = [fremure_ext.window_pack(z[r * n:(r + 1) * n], layout.offsets, self.window, self.stride, False)
                 for r in range(copies)]
        per_copy = packs[0].out.shape[0]
        compiling = torch.compiler.is_compiling()
        if not compiling and per_copy == 0:
            return torch.zeros_like(z).detach()  # the published output of a too-short video: all zeros
        tokens = torch.cat([p.out for p in packs]) if copies > 1 else packs[0].out
        src = torch.cat([p.src_index + r * n for r, p in enumerate(packs)])
        position = packs[0].position.repeat(copies)
        offsets = torch.cat([p.window_offsets[:-1] + r * per_copy for r, p in enumerate(packs)]
                            + [packs[-1].window_offsets[-1:] + (copies - 1) * per_copy])
        table = self.position_embedding.weight.to(z.dtype)
        pos_embed = table.index_select(0, position)   # deterministic backward, unlike table[position]
        layers = list(self.global_attention.layers)
        y = tokens
        for i, layer in enumerate(layers):
            if i == 0:
                core = layer.attend_gathered(z, src, table, position, offsets)
            else:
                core = layer.attend(y, pos_embed, offsets)
            if i == len(layers) - 1 and self.mode == "latter":
                # "latter" keeps one copy per row and everything after the attention core works
                # row by row, so the last layer finishes only the kept copies.
                keep = functools.partial(fremure_ext.window_unpack, src_index=src, weights=None,
                                         num_rows=z.shape[0], mode="latter")
                out = layer(keep(y), keep(core))
                if compiling:
                    # A traced graph also serves videos shorter than the window (no token at all):
                    # finishing the all-zero unpacked rows would not give the published zeros
                    # that eager returns early when there is no token.
                    out = torch.where(packs[0].window_offsets[-1:] > 0, out, 0.0)
                return out
            y = layer(y, core)
        return self.merge_windows(y, src, position, z.shape[0])


def _check_features(features: object, embed_dim: int) -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"features must be a float tensor, got {features.dtype}")
    if features.dim() != 2 or features.shape[1] != embed_dim:
        raise ValueError(f"features must be [N, {embed_dim}], got shape {tuple(features.shape)}")


def _check_config(embed_dim, nhead, mode, mem_compute, mem_fusion, selection, window, stride) -> None:
    if embed_dim % nhead:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by nhead ({nhead})")
    for name, value, choices in (("mode", mode, MODES), ("mem_compute", mem_compute, (None, True, "joint", "seperate")),
                                 ("mem_fusion", mem_fusion, CHOICES["mem_fusion"]),
                                 ("selection", selection, CHOICES["selection"])):
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    for value, name in ((window, "window"), (stride, "stride")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


__all__ = ["GlocalTransformer", "TransformerOutput", "MEMORY_TYPES", "MODES", "UNPACK_MODES", "memory_read"]
