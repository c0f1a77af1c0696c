"""Object classifier of FReMuRe (TEMPURA-style), published parameter layout; docs/ag_and_eval.md 2.7.

PredCls passes the ground-truth labels through. SGCls/SGDet classify every box from
``[RoI feature 2048 | distribution @ class embeddings 200 | box position 128]``; at test time they
re-label the boxes, pick each frame's person, suppress duplicates (SGCls) or duplicate
book/chair/food rows and run per-class NMS (SGDet), then build the person-object pairs, their
union-box features and spatial masks. Frame loops of the published code are vectorised.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from fremure.data.geometry import spatial_masks

from .embeddings import WORD_DIM, glove_table
from .heads import GMMHead
from .pairs import center_size, grouped_nms, segment_first_argmax, union_boxes, union_features
from .tracking import MAX_POSITIONS, FramePositionalEncoding, build_track_encoder, encode_tracks, track_layout

OBJ_DIM = 2048
POS_DIM = 128
HIDDEN = 1024
TRACK_DIM = OBJ_DIM + WORD_DIM + POS_DIM   # 2376: the classifier input, which tracking encodes
CLEAN_CLASSES = (5, 8, 17)   # book, chair, food: duplicated with their second-best class at SGDet test
NMS_THRESHOLD = 0.6
PERSON = 1


class ObjectClassifier(nn.Module):
    """Box classifier + test-time pairing.

    Args:
        mode: "predcls" | "sgcls" | "sgdet".
        obj_head: "linear" or "gmm" (TEMPURA GMM head over ``len(obj_classes)`` classes, K = ``K``).
        obj_classes: the class names (background first; their GloVe vectors initialise
            ``obj_embed`` for classes 1..) or their number.
        mem_compute: object memory read-out (TEMPURA); selection/selection_lambda as published.
        tracking: the published tracking option (SGCls/SGDet): before the ``intermediate`` layer,
            the 2376-d box inputs pass a 3-layer transformer over the boxes of each predicted class
            across the video (:mod:`fremure.model.tracking`); ``object_features`` and
            ``object_mem_features`` (and the object memory) are then 2376-d. Off by default.
        glove: see :func:`fremure.model.embeddings.glove_table`.
    """

    def __init__(self, mode: str = "sgdet", obj_head: str = "gmm", K: int = 4, obj_classes: Sequence[str] | int = 37,
                 mem_compute: bool | None = None, selection: str | None = None, selection_lambda: float = 0.5,
                 tracking: bool = False, glove: Any = None):
        super().__init__()
        if mode not in ("predcls", "sgcls", "sgdet"):
            raise ValueError(f"mode must be 'predcls', 'sgcls' or 'sgdet', got {mode!r}")
        if obj_head not in ("linear", "gmm"):
            raise ValueError(f"obj_head must be 'linear' or 'gmm', got {obj_head!r}")
        names = list(obj_classes) if not isinstance(obj_classes, int) else None
        num_classes = len(names) if names is not None else obj_classes
        self.mode, self.obj_head, self.num_classes = mode, obj_head, num_classes
        self.tracking = bool(tracking)
        self.mem_compute, self.selection, self.selection_lambda = mem_compute, selection, float(selection_lambda)
        self.obj_embed = nn.Embedding(num_classes - 1, WORD_DIM)
        if names is not None:
            self.obj_embed.weight.data = glove_table(names[1:], glove)
        self.pos_embed = nn.Sequential(nn.BatchNorm1d(4, momentum=0.01 / 10.0), nn.Linear(4, POS_DIM),
                                       nn.ReLU(inplace=True), nn.Dropout(0.1))
        self.mem_dim = TRACK_DIM if self.tracking else HIDDEN
        if self.tracking:
            self.positional_encoder = FramePositionalEncoding(TRACK_DIM, 0.1, MAX_POSITIONS[mode])
            self.encoder_tran = build_track_encoder(TRACK_DIM)
        if mem_compute:
            self.mem_attention = nn.MultiheadAttention(self.mem_dim, 1, 0.0, bias=False)
            if selection != "manual":
                # The published selector is Linear(1024, 1) even with tracking, where it cannot
                # read the 2376-d features; it is sized to the features here.
                self.selector = nn.Linear(self.mem_dim, 1)
        self.intermediate = nn.Sequential(nn.Linear(OBJ_DIM + WORD_DIM + POS_DIM, HIDDEN), nn.BatchNorm1d(HIDDEN),
                                          nn.ReLU())
        if obj_head == "gmm":
            self.decoder_lin = GMMHead(hid_dim=HIDDEN, num_classes=num_classes, rel_type=None, k=K)
        else:
            self.decoder_lin = nn.Sequential(nn.Linear(HIDDEN, num_classes))
        self.register_buffer("obj_memory", None, persistent=False)

    def set_memory(self, memory: torch.Tensor | None) -> None:
        """Object prototypes ``[C - 1, 1024]`` (``[C - 1, 2376]`` with tracking), or None / empty
        to switch the read-out off."""
        if memory is None or (not isinstance(memory, torch.Tensor) and len(memory) == 0) or memory.numel() == 0:
            self.obj_memory = None
            return
        if memory.dim() != 2 or memory.shape[1] != self.mem_dim:
            raise ValueError(f"object memory must be [C, {self.mem_dim}], got {tuple(memory.shape)}")
        self.obj_memory = memory.to(self.intermediate[0].weight)

    def _hallucinate(self, feat: torch.Tensor) -> torch.Tensor:
        if not self.mem_compute or self.obj_memory is None:
            return feat
        e = self.selection_lambda if self.selection == "manual" else self.selector(feat).sigmoid()
        read, _ = self.mem_attention(feat.unsqueeze(1), self.obj_memory.unsqueeze(1), self.obj_memory.unsqueeze(1))
        return e * feat + (1 - e) * read.squeeze(1)

    def track(self, entry: dict, feat: torch.Tensor) -> torch.Tensor:
        """Tracking encoder over the boxes grouped by the incoming (detector) distribution's
        argmax, as the published ``get_sequence`` groups them before the model runs."""
        layout = track_layout(entry["distribution"].argmax(dim=1), entry["boxes"][:, 0].long())
        return encode_tracks(self.encoder_tran, self.positional_encoder, feat, layout)

    def _classify(self, entry: dict, phase: str, unc: bool) -> None:
        obj_embed = entry["distribution"] @ self.obj_embed.weight
        pos_embed = self.pos_embed(center_size(entry["boxes"][:, 1:]))
        feat = torch.cat((entry["features"], obj_embed, pos_embed), 1)
        # With tracking the memory read-out works on the tracked 2376-d features, before ``intermediate``.
        feat = self.track(entry, feat) if self.tracking else self.intermediate(feat)
        entry["object_features"] = feat
        feat = entry["object_mem_features"] = self._hallucinate(feat)
        if self.tracking:
            feat = self.intermediate(feat)
        if phase == "train":
            if self.obj_head == "gmm" and unc:
                entry["distribution"] = self.decoder_lin(feat, phase="test")
                entry["obj_al_uc"], entry["obj_ep_uc"] = self.decoder_lin(feat, unc=True)
            elif self.obj_head == "gmm":
                entry["distribution"] = self.decoder_lin(feat, phase="train")
            else:
                entry["distribution"] = self.decoder_lin(feat)
            entry["pred_labels"] = entry["labels"]
        elif self.obj_head == "gmm":
            entry["distribution"] = self.decoder_lin(feat, phase=phase, unc=unc)
        else:
            entry["distribution"] = torch.softmax(self.decoder_lin(feat)[:, 1:], dim=1)

    def forward(self, entry: dict, phase: str = "train", unc: bool = False) -> dict:
        """Classifies (SGCls/SGDet) and, at test time, re-labels and pairs; returns ``entry``
        (updated in place: ``pred_labels``, ``distribution``, ``pred_scores``, ``pair_idx``,
        ``im_idx``, ``union_feat``, ``union_box``, ``spatial_masks``, ... as published)."""
        if self.mode == "predcls":
            entry["pred_labels"] = entry["labels"]
            return entry
        self._classify(entry, phase, unc)
        if phase == "train":
            return entry
        return self.label_and_pair(entry)

    def label_and_pair(self, entry: dict) -> dict:
        """Test-time re-labelling and pairing from ``entry["distribution"]`` ``[N, C - 1]``
        (classes 1..C-1): SGCls picks each frame's person and drops repeated labels; SGDet
        duplicates book/chair/food rows, runs per-class NMS (IoU 0.6) and picks the persons. Then
        the (person, object) pairs of every frame in row order, their union-box RoI features
        (``entry["fmaps"]``, ``entry["im_info"]``) and spatial masks. Returns ``entry``."""
        if self.mode == "sgcls":
            self._label_sgcls(entry)
        else:
            self._clean_and_nms(entry)
            self._label_sgdet(entry)
        self._build_pairs(entry, sgdet=self.mode == "sgdet")
        return entry

    # ------------------------------------------------------------------ test-time labelling

    @staticmethod
    def _frames(entry: dict) -> tuple[torch.Tensor, int]:
        frame = entry["boxes"][:, 0].long()
        return frame, int(frame[-1]) + 1 if frame.numel() else 0

    @staticmethod
    def _best_non_person(entry: dict) -> None:
        scores, labels = torch.max(entry["distribution"][:, 1:], dim=1)
        entry["pred_scores"], entry["pred_labels"] = scores, labels + 2

    def _pick_humans(self, entry: dict) -> torch.Tensor:
        """Row with the highest person probability in every frame -> ``[b]`` (-1: frame without rows)."""
        frame, b = self._frames(entry)
        humans = segment_first_argmax(entry["distribution"][:, 0], frame, b)
        present = humans[humans >= 0]
        entry["pred_labels"][present] = PERSON
        entry["pred_scores"][present] = entry["distribution"][present, 0]
        return humans

    def _label_sgcls(self, entry: dict) -> None:
        self._best_non_person(entry)
        humans = self._pick_humans(entry)
        self._drop_repeats(entry)
        entry["_humans"] = humans

    def _drop_repeats(self, entry: dict) -> None:
        """Per frame: of the rows carrying the frame's most frequent label (smallest among ties),
        keep the one scoring highest on it; the others lose that class and take their next best."""
        frame, b = self._frames(entry)
        labels, dist = entry["pred_labels"], entry["distribution"]
        width = self.num_classes + 1
        counts = torch.bincount(frame * width + labels, minlength=b * width).view(b, width)
        mode_label = counts.argmax(dim=1)                      # first maximum = smallest label
        rows = torch.nonzero(labels == mode_label[frame]).flatten()
        if rows.numel() == 0:
            return
        column = labels[rows] - 1
        score = dist[rows, column]
        # The published loop keeps the last of an ascending argsort: the highest score (last among ties).
        best = torch.full((b,), float("-inf"), dtype=score.dtype, device=score.device)
        best = best.scatter_reduce(0, frame[rows], score, "amax")
        is_best = score == best[frame[rows]]
        last_best = torch.full((b,), -1, dtype=torch.long, device=rows.device)
        last_best = last_best.scatter_reduce(0, frame[rows], torch.where(is_best, rows, -1), "amax")
        demote = rows[rows != last_best[frame[rows]]]
        if demote.numel() == 0:
            return
        dist[demote, labels[demote] - 1] = 0
        scores, best_col = dist[demote].max(dim=1)
        labels[demote] = best_col + 1
        entry["pred_scores"][demote] = scores

    def _label_sgdet(self, entry: dict) -> None:
        self._best_non_person(entry)
        entry["_humans"] = self._pick_humans(entry)

    def _clean_and_nms(self, entry: dict) -> None:
        for cls in CLEAN_CLASSES:
            self._duplicate_class(entry, cls)
        frame, b = self._frames(entry)
        dist = entry["distribution"]
        column = dist.argmax(dim=1)
        groups = frame * dist.shape[1] + column
        keep = grouped_nms(entry["boxes"][:, 1:], dist[torch.arange(dist.shape[0]), column], groups, NMS_THRESHOLD)
        for key in ("boxes", "distribution", "features", "object_mem_features"):
            if key in entry:
                entry[key] = entry[key][keep]

    @staticmethod
    def _duplicate_class(entry: dict, cls: int) -> None:
        """Appends after each frame's rows a copy of its rows labelled ``cls`` with that class's
        probability zeroed and the next-best label (the published ``clean_class``)."""
        frame = entry["boxes"][:, 0].long()
        dup = torch.nonzero(entry["pred_labels"] == cls).flatten()
        new_dist = entry["distribution"][dup].clone()
        new_dist[:, cls - 1] = 0
        new_labels = new_dist.argmax(dim=1) + 1 if dup.numel() else entry["pred_labels"][dup]
        key = torch.cat([frame * 2, frame[dup] * 2 + 1])
        order = torch.argsort(key, stable=True)
        source = torch.cat([torch.arange(frame.shape[0], device=frame.device), dup])[order]
        entry["distribution"] = torch.cat([entry["distribution"], new_dist])[order]
        entry["pred_labels"] = torch.cat([entry["pred_labels"], new_labels])[order]
        for key_name in ("boxes", "features", "object_mem_features"):
            if key_name in entry:
                entry[key_name] = entry[key_name][source]

    def _build_pairs(self, entry: dict, sgdet: bool) -> None:
        """(person, object) pairs of every frame in row order, union features and spatial masks."""
        humans = entry.pop("_humans")
        frame, _ = self._frames(entry)
        objects = torch.nonzero(entry["pred_labels"] != PERSON).flatten()
        objects = objects[humans[frame[objects]] >= 0]
        pair = torch.stack([humans[frame[objects]], objects], dim=1)
        im_idx = frame[objects].to(torch.float32)
        entry["pair_idx"], entry["im_idx"] = pair, im_idx
        if sgdet:
            entry["human_idx"] = humans.clamp(min=0).view(-1, 1)
        scale = entry["im_info"]
        boxes = entry["boxes"][:, 1:]
        union = union_boxes(boxes * scale, pair, im_idx)
        entry["union_feat"] = union_features(entry["fmaps"], union)
        entry["union_box"] = union
        pair_boxes = torch.cat((boxes[pair[:, 0]], boxes[pair[:, 1]]), 1)
        entry["spatial_masks"] = spatial_masks(pair_boxes).to(boxes.device)
