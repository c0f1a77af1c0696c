"""The FReMuRe relation model (docs/method.md sections 2-4), published parameter layout.

``forward(entry, phase, unc)`` takes and returns the published ``entry`` dict (docs/ag_and_eval.md
2.6): object classification/pairing, relation features (subject/object RoI features, union
branch, class embeddings; D = 1936), the glocal transformer per relation type with its frequency
prior, and the three relation heads.

Performance design (ops path): the local and tail encoders do not depend on the relation type, so
they run once per video and are shared by the three types; only the frequency gate, fusion,
temporal decoder (batched over the types) and memory read-out are per type. Eval results are
unchanged; in training with dropout the three types share the encoders' dropout masks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

import fremure_ext

from ..relations import RELATION_TYPES
from .config import ModelConfig
from .embeddings import WORD_DIM, glove_table
from .glocal import MEMORY_TYPES, GlocalTransformer, TransformerOutput
from .heads import make_rel_head
from .objects import OBJ_DIM, ObjectClassifier
from .pairs import MASK_SIZE

EMBED_DIM = 1936           # 512 subject + 512 object + 512 union + 200 + 200 class embeddings
UNION_CHANNELS = 1024
VISUAL_DIM = 512
# published key -> (head attribute, entry-key prefix, prior buffer)
REL_KEYS = {r.key: (r.head, r.name, f"freq_{r.key}") for r in RELATION_TYPES}


class FReMuRe(nn.Module):
    """FReMuRe relation model with the published constructor (defaults: the published training
    configuration, ``lib/config.py``). The options are :class:`ModelConfig`'s (see
    :meth:`from_config` for the mapping); beyond them: obj_classes (names, background first, or
    their number), rel_classes (unused, kept for the signature), freq_attention / freq_spatial /
    freq_contact (``[3]``, ``[6]``, ``[17]`` class frequencies; None switches the frequency branch
    off), glove (GloVe path or table for the class embeddings) and frequency_branch (see
    :class:`GlocalTransformer`; without the branch, priors are refused: STTran).
    """

    def __init__(self, mode: str = "predcls", attention_class_num: int = 3, spatial_class_num: int = 6,
                 contact_class_num: int = 17, obj_classes: Sequence[str] | int = 37,
                 rel_classes: Sequence[str] | None = None, enc_layer_num: int = 1, dec_layer_num: int = 3,
                 obj_mem_compute: bool = False, rel_mem_compute: str | None = "joint", mem_fusion: str = "late",
                 selection: str = "manual", selection_lambda: float = 0.5, take_obj_mem_feat: bool = False,
                 obj_head: str = "linear", rel_head: str = "bayesian", K: int = 6, tracking: bool = False,
                 freq_attention: torch.Tensor | None = None, freq_spatial: torch.Tensor | None = None,
                 freq_contact: torch.Tensor | None = None, *, decouple: str = "shared",
                 gate: str = "stats", window: int = 2, stride: int = 1, window_mode: str = "latter",
                 glove: Any = None, keep_unused: bool = True, dropout: float = 0.1,
                 frequency_branch: bool = True):
        super().__init__()
        self.config: ModelConfig | None = None      # set by from_config: what checkpoints record
        if decouple not in ("shared", "separate"):
            raise ValueError(f"decouple must be 'shared' or 'separate', got {decouple!r}")
        self.frequency_branch = bool(frequency_branch)
        if take_obj_mem_feat and mode == "predcls":
            raise ValueError("take_obj_mem_feat=True needs the object classifier's features (sgcls/sgdet)")
        self.mode, self.decouple, self.rel_head, self.obj_head = mode, decouple, rel_head, obj_head
        self.attention_class_num, self.spatial_class_num = attention_class_num, spatial_class_num
        self.contact_class_num = contact_class_num
        self.rel_classes = rel_classes
        names = list(obj_classes) if not isinstance(obj_classes, int) else None
        self.object_classes = names             # names, background first, when given (checkpoints record them)
        self.num_obj_classes = len(names) if names is not None else obj_classes
        self.object_classifier = ObjectClassifier(mode=mode, obj_head=obj_head, K=K, obj_classes=obj_classes,
                                                  mem_compute=obj_mem_compute, selection=selection,
                                                  selection_lambda=selection_lambda, tracking=tracking, glove=glove)
        self.union_func1 = nn.Conv2d(UNION_CHANNELS, 256, 1, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(2, 128, kernel_size=7, stride=2, padding=3, bias=True), nn.ReLU(inplace=True),
            nn.BatchNorm2d(128, momentum=0.01), nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(128, 256, kernel_size=3, stride=1, padding=1, bias=True), nn.ReLU(inplace=True),
            nn.BatchNorm2d(256, momentum=0.01))
        self.take_obj_mem_feat = take_obj_mem_feat
        box_dim = self.object_classifier.mem_dim if take_obj_mem_feat else OBJ_DIM
        self.subj_fc = nn.Linear(box_dim, VISUAL_DIM)
        self.obj_fc = nn.Linear(box_dim, VISUAL_DIM)
        self.vr_fc = nn.Linear(256 * 7 * 7, VISUAL_DIM)
        self.obj_embed = nn.Embedding(self.num_obj_classes, WORD_DIM)
        self.obj_embed2 = nn.Embedding(self.num_obj_classes, WORD_DIM)
        if names is not None:
            table = glove_table(names, glove)
            self.obj_embed.weight.data = table.clone()
            self.obj_embed2.weight.data = table.clone()

        def transformer():
            return GlocalTransformer(embed_dim=EMBED_DIM, nhead=8, dim_feedforward=2048, enc_layer_num=enc_layer_num,
                                     dec_layer_num=dec_layer_num, dropout=dropout, mode=window_mode,
                                     mem_compute=rel_mem_compute, mem_fusion=mem_fusion, selection=selection,
                                     selection_lambda=selection_lambda, window=window, stride=stride,
                                     gate=gate, keep_unused=keep_unused, frequency_branch=frequency_branch)

        if decouple == "shared":
            self.glocal_transformer = transformer()
        else:
            self.glocal_transformer = nn.ModuleDict({r: transformer() for r in REL_KEYS})
        classes = {"attention": attention_class_num, "spatial": spatial_class_num, "contact": contact_class_num}
        for rel_type, (attr, _, freq_attr) in REL_KEYS.items():
            setattr(self, attr, make_rel_head(rel_head, EMBED_DIM, classes[rel_type], rel_type, K))
            self.register_buffer(freq_attr, None, persistent=False)
        self.set_frequencies({"attention": freq_attention, "spatial": freq_spatial, "contact": freq_contact})
        for mem_type in MEMORY_TYPES:
            self.register_buffer(f"rel_memory_{mem_type}", None, persistent=False)

    @classmethod
    def from_config(cls, config: ModelConfig, obj_classes: Sequence[str] | int,
                    frequencies: Mapping[str, torch.Tensor | None] | None = None, glove: Any = None) -> "FReMuRe":
        """The model of ``config`` (a :class:`~fremure.model.config.ModelConfig`) for ``obj_classes``
        (names, background first, or their number) with the frequency priors ``{"attention": [3],
        "spatial": [6], "contact": [17]}`` ("contacting" accepted); without priors, or with
        ``config.freq`` False, the frequency branch is off. ``model.config`` keeps ``config``."""
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        if config.name != "fremure":
            raise ValueError(f"config names model {config.name!r}; FReMuRe.from_config builds 'fremure'")
        model = cls(mode=config.mode, obj_classes=obj_classes, enc_layer_num=config.enc_layer,
                    dec_layer_num=config.dec_layer, obj_mem_compute=config.obj_mem_compute,
                    rel_mem_compute=config.memory, mem_fusion=config.mem_fusion, selection=config.selection,
                    selection_lambda=config.mem_feat_lambda, take_obj_mem_feat=config.take_obj_mem_feat,
                    obj_head=config.obj_head, rel_head=config.rel_head, K=config.K, tracking=config.tracking,
                    decouple=config.decouple, gate=config.gate, window=config.window, stride=config.stride,
                    window_mode=config.window_mode, glove=glove, keep_unused=config.keep_unused,
                    dropout=config.dropout)
        model.set_frequencies(frequencies if config.freq else None)
        model.config = config
        return model

    def _kernel_choice(self):
        """The config's explicit kernel choice for this forward; "auto" (or no config) leaves the
        surrounding one (``use_kernels`` block, else ``FREMURE_KERNELS``)."""
        if self.config is None or self.config.kernels == "auto":
            return contextlib.nullcontext()
        return fremure_ext.dispatch.use_kernels(self.config.kernels)

    # ------------------------------------------------------------------ priors and memory

    def set_frequencies(self, freqs: Mapping[str, torch.Tensor | None] | None) -> None:
        """Sets the class-frequency priors ``{"attention": [3], "spatial": [6], "contact": [17]}``
        ("contacting" accepted); None (or all None) switches the frequency branch off."""
        freqs = dict(freqs or {})
        if "contacting" in freqs:
            freqs["contact"] = freqs.pop("contacting")
        sizes = {"attention": self.attention_class_num, "spatial": self.spatial_class_num,
                 "contact": self.contact_class_num}
        unknown = set(freqs) - set(sizes)
        if unknown:
            raise ValueError(f"frequency priors must be keyed by {list(sizes)}, got {sorted(unknown)}")
        given = {r: f for r, f in freqs.items() if f is not None}
        if given and not self.frequency_branch:
            raise ValueError(f"this model has no frequency branch, so it takes no frequency priors; got {sorted(given)}")
        if given and len(given) != 3:
            raise ValueError(f"give all three frequency priors or none, got only {sorted(given)}")
        for rel_type, (_, _, attr) in REL_KEYS.items():
            f = given.get(rel_type)
            if f is not None:
                f = torch.as_tensor(f, dtype=torch.float32)
                if f.shape != (sizes[rel_type],):
                    raise ValueError(f"frequency prior of {rel_type!r} must have shape [{sizes[rel_type]}], "
                                     f"got {tuple(f.shape)}")
            setattr(self, attr, f)

    @property
    def frequencies(self) -> dict[str, torch.Tensor] | None:
        """The priors keyed by "attention" / "spatial" / "contact", or None when unset."""
        if self.freq_attention is None:
            return None
        return {r: getattr(self, attr) for r, (_, _, attr) in REL_KEYS.items()}

    @property
    def rel_memory(self) -> dict[str, torch.Tensor]:
        """Relation prototypes ``{"attention": [3, D], "spatial": [6, D], "contacting": [17, D]}``;
        {} while empty (epoch 0)."""
        if getattr(self, "rel_memory_attention") is None:
            return {}
        return {r: getattr(self, f"rel_memory_{r}") for r in MEMORY_TYPES}

    @rel_memory.setter
    def rel_memory(self, memory: Mapping[str, torch.Tensor] | None) -> None:
        if memory is None or len(memory) == 0:
            for r in MEMORY_TYPES:
                setattr(self, f"rel_memory_{r}", None)
            return
        if set(memory) != set(MEMORY_TYPES):
            raise ValueError(f"relation memory must have the keys {MEMORY_TYPES}, got {sorted(memory)}")
        for r in MEMORY_TYPES:
            m = torch.as_tensor(memory[r])
            if m.dim() != 2 or m.shape[1] != EMBED_DIM:
                raise ValueError(f"relation memory[{r!r}] must be [C, {EMBED_DIM}], got {tuple(m.shape)}")
            setattr(self, f"rel_memory_{r}", m.to(self.subj_fc.weight))

    # ------------------------------------------------------------------ forward

    def relation_features(self, entry: dict) -> torch.Tensor:
        """``[P, 1936]`` = [subj_fc | obj_fc | vr_fc(union branch) | subject emb | object emb]."""
        _check_entry(entry)
        pair = entry["pair_idx"]
        boxes = entry["object_mem_features"] if self.take_obj_mem_feat else entry["features"]
        # index_select: deterministic backward on the CPU (indexing's backward adds atomically)
        subj = self.subj_fc(boxes.index_select(0, pair[:, 0]))
        obj = self.obj_fc(boxes.index_select(0, pair[:, 1]))
        union = self.union_func1(entry["union_feat"]) + self.conv(entry["spatial_masks"].to(subj.dtype))
        union = self.vr_fc(union.view(-1, 256 * 7 * 7))
        labels = entry["pred_labels"]
        semantic = torch.cat((self.obj_embed(labels[pair[:, 0]]), self.obj_embed2(labels[pair[:, 1]])), 1)
        return torch.cat((subj, obj, union, semantic), dim=1)

    def _transformer_passes(self, features: torch.Tensor, im_idx: torch.Tensor) -> dict[str, TransformerOutput]:
        """The transformer's output per published key (one shared pass for all types when
        there are neither priors nor per-type transformers)."""
        memory, freqs = self.rel_memory, self.frequencies
        if self.decouple == "separate":
            return {r: self.glocal_transformer[r](features, im_idx, memory, r, None if freqs is None else freqs[r])
                    for r in REL_KEYS}
        if freqs is None:
            return dict.fromkeys(REL_KEYS, self.glocal_transformer(features, im_idx, memory=memory))
        return self.glocal_transformer.forward_types(features, im_idx, memory, freqs)

    def forward(self, entry: dict, phase: str = "train", unc: bool = False,
                generator: torch.Generator | None = None) -> dict:
        """Runs the model on one video's ``entry`` and returns it with, for every relation type
        ``<name>`` (attention, spatial, contacting; docs/architecture.md, "The model's outputs"):
        ``<name>_distribution`` ``[P, C]`` (``<name>_al_uc`` / ``<name>_ep_uc`` instead when
        ``unc`` with a non-linear head), ``<name>_features`` ``[P, 1936]`` (pre-memory) and
        ``<name>_mem_features`` ``[P, 1936]``, plus the priors ``freq_<key>`` when set.
        ``generator`` drives the heads' training noise (global RNG when None)."""
        with self._kernel_choice():
            return self._forward(entry, phase, unc, generator)

    def _forward(self, entry: dict, phase: str, unc: bool, generator: torch.Generator | None) -> dict:
        entry = self.object_classifier(entry, phase=phase, unc=unc)
        features = self.relation_features(entry)
        passes = self._transformer_passes(features, entry["im_idx"])
        for rel_type, (attr, name, freq_attr) in REL_KEYS.items():
            out, head = passes[rel_type], getattr(self, attr)
            entry[f"{name}_features"], entry[f"{name}_mem_features"] = out.local_output, out.mem_features
            if getattr(self, freq_attr) is not None:
                entry[freq_attr] = getattr(self, freq_attr)
            if unc and self.rel_head != "linear":
                entry[f"{name}_al_uc"], entry[f"{name}_ep_uc"] = head(out.output, phase, unc=True)
            else:
                entry[f"{name}_distribution"] = head(out.output, phase, generator=generator)
        return entry


def _check_entry(entry: Any) -> None:
    """Boundary checks of the keys the relation features read (ValueError naming the key)."""
    if not isinstance(entry, dict):
        raise TypeError(f"entry must be a dict, got {type(entry).__name__}")
    for key in ("features", "pair_idx", "im_idx", "union_feat", "spatial_masks", "pred_labels"):
        if key not in entry:
            raise ValueError(f"entry lacks {key!r}")
    features, pair = entry["features"], entry["pair_idx"]
    if features.dim() != 2 or features.shape[1] != OBJ_DIM:
        raise ValueError(f"entry['features'] must be [N, {OBJ_DIM}], got {tuple(features.shape)}")
    if pair.dim() != 2 or pair.shape[1] != 2 or pair.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"entry['pair_idx'] must be an integer [P, 2] tensor, got {tuple(pair.shape)} {pair.dtype}")
    n, p = features.shape[0], pair.shape[0]
    if p and (int(pair.min()) < 0 or int(pair.max()) >= n):
        raise ValueError(f"entry['pair_idx'] indexes rows [{int(pair.min())}, {int(pair.max())}] but there are "
                         f"{n} boxes")
    for key, shape in (("pred_labels", [n]), ("union_feat", [p, UNION_CHANNELS, 7, 7]),
                       ("spatial_masks", [p, 2, MASK_SIZE, MASK_SIZE]), ("im_idx", [p])):
        if list(entry[key].shape) != shape:
            raise ValueError(f"entry[{key!r}] must be {shape}, got {tuple(entry[key].shape)}")
