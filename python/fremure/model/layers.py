"""Building blocks of the glocal transformer (docs/method.md section 3).

Every layer keeps the published parameter layout (``nn.MultiheadAttention`` with its packed
``in_proj_weight``, ``linear1/linear2``, ``normK``) so published state dicts load unchanged, and
computes on packed tokens ``[T, D]`` with CSR segment offsets (attention within each segment by
``fremure_ext.segment_attention``, no padding row). Dropouts are the published ones, the attention's
own included (Philox keep-masks); the padded computation is :mod:`fremure.model.published`.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import fremure_ext

from ..relations import RELATION_TYPES

REL_CLASSES = {r.key: r.classes for r in RELATION_TYPES}   # keyed as the published freq_mapper
STAT_EPS = 1e-6
FUSION_TEMPERATURE, FUSION_LO, FUSION_HI = 1.5, 0.02, 0.98


def segment_core(mha: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 offsets: torch.Tensor) -> torch.Tensor:
    """Multi-head softmax attention of projected ``q, k, v [T, D]`` within the segments
    ``offsets``, heads merged back to ``[T, D]`` (before ``mha``'s output projection).

    In training mode the attention probabilities are dropped with ``mha.dropout``, as
    ``nn.MultiheadAttention`` does; the op draws the mask's seed from torch's default generator."""
    heads = mha.num_heads
    tokens, dim = q.shape
    shape = (tokens, heads, dim // heads)
    dropout_p = float(mha.dropout) if mha.training else 0.0
    out = fremure_ext.segment_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), offsets,
                                        1.0 / math.sqrt(dim // heads), dropout_p=dropout_p)
    return out.reshape(tokens, dim)


def packed_attention(mha: nn.MultiheadAttention, query: torch.Tensor, value: torch.Tensor,
                     offsets: torch.Tensor, project_out: bool = True) -> torch.Tensor:
    """``mha(query, query, value)`` restricted to segments, on packed tokens.

    query (also the key), value: ``[T, D]``; offsets: int64 ``[S + 1]`` CSR of the segments.
    Returns ``[T, D]`` (before the output projection when ``project_out`` is False).
    """
    dim = mha.embed_dim
    weight, bias = mha.in_proj_weight, mha.in_proj_bias
    if query is value:
        q, k, v = F.linear(query, weight, bias).split(dim, dim=-1)
    else:
        qk_bias = None if bias is None else bias[: 2 * dim]
        v_bias = None if bias is None else bias[2 * dim:]
        q, k = F.linear(query, weight[: 2 * dim], qk_bias).split(dim, dim=-1)
        v = F.linear(value, weight[2 * dim:], v_bias)
    out = segment_core(mha, q, k, v, offsets)
    return F.linear(out, mha.out_proj.weight, mha.out_proj.bias) if project_out else out


def post_norm_block(layer: nn.Module, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """A post-norm encoder layer after its self-attention: x, attended ``[..., D]`` -> add, norm1, ReLU
    FFN, add, norm2. For :class:`EncoderLayer` and ``nn.TransformerEncoderLayer`` (same attributes)."""
    x = layer.norm1(x + layer.dropout1(attended))
    hidden = layer.linear2(layer.dropout(F.relu(layer.linear1(x))))
    return layer.norm2(x + layer.dropout2(hidden))


def post_norm_layer_packed(layer: nn.Module, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """A post-norm encoder layer on packed tokens ``x [T, D]`` with segments ``offsets``."""
    return post_norm_block(layer, x, packed_attention(layer.self_attn, x, x, offsets))


def add_feedforward(layer: nn.Module, embed_dim: int, dim_feedforward: int, dropout: float) -> None:
    """Registers the published FFN modules ``linear1``, ``dropout``, ``linear2`` on ``layer`` (in
    the published key order, right after the attention module)."""
    layer.linear1 = nn.Linear(embed_dim, dim_feedforward)
    layer.dropout = nn.Dropout(dropout)
    layer.linear2 = nn.Linear(dim_feedforward, embed_dim)


class EncoderLayer(nn.Module):
    """STTran spatial encoder layer (post-norm, ReLU FFN); published ``TransformerEncoderLayer``."""

    def __init__(self, embed_dim: int = 1936, nhead: int = 4, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dim, nhead, dropout=dropout)
        add_feedforward(self, embed_dim, dim_feedforward, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """x: ``[T, D]`` packed tokens; offsets: int64 CSR of the attention segments. Returns ``[T, D]``."""
        return post_norm_layer_packed(self, x, offsets)


class DecoderLayer(nn.Module):
    """STTran temporal decoder layer; published ``TransformerDecoderLayer``: position-embedded
    self-attention -> add -> norm3 -> ReLU FFN -> add (no norm after the FFN). ``forward`` finishes,
    row by row, the attention core that :meth:`attend` or :meth:`attend_gathered` computed."""

    def __init__(self, embed_dim: int = 1936, nhead: int = 4, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.multihead2 = nn.MultiheadAttention(embed_dim, nhead, dropout=dropout)
        add_feedforward(self, embed_dim, dim_feedforward, dropout)
        self.norm3 = nn.LayerNorm(embed_dim)
        self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout)

    def attend(self, x: torch.Tensor, position: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Attention core of packed window tokens ``x [T, D]`` (queries and keys ``x + position``,
        values ``x``) within the windows ``offsets``: ``[T, D]`` before the output projection."""
        return packed_attention(self.multihead2, x + position, x, offsets, project_out=False)

    def attend_gathered(self, rows: torch.Tensor, src: torch.Tensor, table: torch.Tensor, position: torch.Tensor,
                        offsets: torch.Tensor) -> torch.Tensor:
        """Attention core (before the output projection) of window tokens ``rows[src]`` with
        position rows ``table[position]``, projecting the ``[R, D]`` source rows and the
        ``[window, D]`` table instead of the (more numerous) tokens: the projections are linear,
        so ``W (rows[src] + table[position]) = (W rows)[src] + (W table)[position]``."""
        mha, dim = self.multihead2, rows.shape[1]
        weight, bias = mha.in_proj_weight, mha.in_proj_bias
        # index_select, not advanced indexing: its backward (index_add) is deterministic on the CPU,
        # where indexing's backward adds with atomics in parallel
        qk = (F.linear(rows, weight[: 2 * dim]).index_select(0, src)
              + F.linear(table, weight[: 2 * dim], bias[: 2 * dim]).index_select(0, position))
        v = F.linear(rows, weight[2 * dim:], bias[2 * dim:]).index_select(0, src)
        q, k = qk.split(dim, dim=-1)
        return segment_core(mha, q, k, v, offsets)

    def forward(self, x: torch.Tensor, core: torch.Tensor) -> torch.Tensor:
        """Everything after the attention core, row by row: x, core ``[..., D]`` -> output
        projection, then :meth:`after_attention`."""
        return self.after_attention(x, F.linear(core, self.multihead2.out_proj.weight, self.multihead2.out_proj.bias))

    def after_attention(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """x, attended (after the output projection) ``[..., D]`` -> add -> norm3 -> FFN -> add."""
        x = self.norm3(x + self.dropout2(attended))
        return x + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x)))))


class LayerStack(nn.Module):
    """``num_layers`` deep copies of one layer under ``layers.<i>`` (the published key layout)."""

    def __init__(self, layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])


def frequency_statistics(freq: torch.Tensor) -> torch.Tensor:
    """The six float32 statistics of a class-frequency vector ``[C]`` -> ``[6]``:
    mean, min, max, std (biased), entropy and tailness of ``pi = (f + eps) / (sum f + eps C)``."""
    f = freq.float()
    pi = (f + STAT_EPS) / (f.sum() + STAT_EPS * f.numel())
    mean = pi.mean()
    entropy = -(pi * torch.log(pi + STAT_EPS)).sum()
    tailness = torch.log(mean / (pi + STAT_EPS)).mean()
    return torch.stack([mean, pi.min(), pi.max(), pi.std(unbiased=False), entropy, tailness])


class FreqGate(nn.Module):
    """Channel gate from class-frequency statistics: ``g = sigmoid(MLP(stats(f)) / tau)``, ``[D]``
    (``[1]`` when not channel-wise). The published tail encoder's gate."""

    def __init__(self, d_model: int, hidden: int = 64, channel_wise: bool = True, tau: float = 1.0):
        super().__init__()
        self.out_dim = d_model if channel_wise else 1
        self.tau = tau
        self.mlp = nn.Sequential(nn.Linear(6, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, self.out_dim))

    def forward(self, freq: torch.Tensor, rel_type: str | None = None) -> torch.Tensor:
        """freq: ``[C]`` counts or normalised frequencies. Returns the gate ``[D]`` in the MLP's dtype."""
        stats = frequency_statistics(freq).to(self.mlp[0].weight.dtype)
        return torch.sigmoid(self.mlp(stats) / self.tau)


class LogFreqGate(nn.Module):
    """The paper's gate (Eq. 2): ``g = sigmoid(W_r log(1 / (f + eps)) + b_r)``, one linear map per
    relation type (``proj.<type>``). Beyond the reference; checkpoints of the published code use
    :class:`FreqGate`."""

    def __init__(self, d_model: int, class_counts: dict[str, int] | None = None):
        super().__init__()
        counts = dict(REL_CLASSES if class_counts is None else class_counts)
        self.proj = nn.ModuleDict({r: nn.Linear(c, d_model) for r, c in counts.items()})

    def forward(self, freq: torch.Tensor, rel_type: str | None = None) -> torch.Tensor:
        """freq: ``[C_r]``; rel_type: key of ``proj``. Returns ``[D]``."""
        if rel_type not in self.proj:
            raise ValueError(f"rel_type must be one of {list(self.proj)} for the log-frequency gate, got {rel_type!r}")
        proj = self.proj[rel_type]
        return torch.sigmoid(proj(torch.log(1.0 / (freq.to(proj.weight.dtype) + STAT_EPS))))


class FrequencyAwareEncoder(nn.Module):
    """Tail branch: ``nn.TransformerEncoder`` (post-norm, ReLU, ``batch_first=True``) + frequency gate.

    The published code feeds it the frame-packed ``[l, b, D]`` tensor although it is batch-first,
    so it attends across frames among the pairs that share a slot; ``forward`` computes exactly
    that on slot-grouped tokens.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_layers: int = 1, dim_feedforward: int = 2048,
                 dropout: float = 0.1, gate: str = "stats"):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward,
                                           dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers)
        if gate == "stats":
            self.freq_gate = FreqGate(d_model=d_model, hidden=64, channel_wise=True, tau=1.0)
        elif gate == "log_inverse":
            self.freq_gate = LogFreqGate(d_model)
        else:
            raise ValueError(f"gate must be 'stats' or 'log_inverse', got {gate!r}")

    def forward(self, x: torch.Tensor, slot_offsets: torch.Tensor) -> torch.Tensor:
        """x: ``[N, D]`` rows grouped by slot; slot_offsets: CSR of the slot groups. Returns ``[N, D]``
        without the gate (``freq_gate``, applied by the caller with ``freq_gate_blend``)."""
        for layer in self.encoder.layers:
            x = post_norm_layer_packed(layer, x, slot_offsets)
        return x


class FusionGate(nn.Sequential):
    """Published ``fusion_gate_*`` (``0``: ``Linear(2 D + F, D)``, ``1``: sigmoid), applied by ``gated_fusion``."""

    def __init__(self, embed_dim: int, freq_dim: int):
        super().__init__(nn.Linear(2 * embed_dim + freq_dim, embed_dim), nn.Sigmoid())

    def forward(self, local: torch.Tensor, tail: torch.Tensor, mapped: torch.Tensor,
                fusion=fremure_ext.gated_fusion) -> torch.Tensor:
        """local, tail ``[N, D]``; mapped: the mapped priors ``[F]``. ``fusion``: the op or its
        reference. Returns ``[N, D]`` in local's dtype."""
        # the op wants one dtype; under autocast the Linear outputs are bf16/fp16 while the
        # LayerNorm'd local branch stays float32, so the fusion runs in its precision
        dtype, linear = local.dtype, self[0]
        return fusion(local, tail.to(dtype), mapped.to(dtype), linear.weight.to(dtype),
                      None if linear.bias is None else linear.bias.to(dtype), FUSION_TEMPERATURE, FUSION_LO, FUSION_HI)


class FrequencyAwareDecoder(nn.Module):
    """Parameter holder for the published ``global_attention_tail`` (an ``nn.TransformerDecoder``
    plus a frequency gate). The published forward never calls it; it exists so that published
    checkpoints load strictly."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_layers: int = 1, dim_feedforward: int = 2048,
                 dropout: float = 0.1):
        super().__init__()
        layer = nn.TransformerDecoderLayer(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward,
                                           dropout=dropout)
        self.decoder = nn.TransformerDecoder(layer, num_layers=num_layers)
        self.freq_gate = FreqGate(d_model=d_model, hidden=64, channel_wise=True, tau=1.0)
