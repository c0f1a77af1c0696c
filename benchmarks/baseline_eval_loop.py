"""Baseline for the evaluator benchmark: the obvious frame-by-frame, triplet-by-triplet Python version.

It computes what ``fremure.eval.SceneGraphEvaluator`` computes (docs/ag_and_eval.md section 3, reference semantics,
same tie rules) with plain loops and Python floats, written directly from docs/ag_and_eval.md and independently
of the package, so the benchmark can assert that both give the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

KS = (10, 20, 50, 100)
NUM_PREDICATES = 26


def _as_list(value: Any) -> list:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    return np.asarray(value).tolist()


def iou_plus1(a: list[float], b: list[float]) -> float:
    """IoU of two xyxy boxes with the "+1" pixel convention (float64)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    if iw <= 0:
        return 0.0
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if ih <= 0:
        return 0.0
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - iw * ih
    return iw * ih / union


class LoopEvaluator:
    """Per-frame, per-triplet loop evaluator; same constructor basics and summary as SceneGraphEvaluator."""

    def __init__(self, mode: str, constraint: str = "with", iou_threshold: float = 0.5,
                 semi_threshold: float = 0.9) -> None:
        self.mode = mode
        self.constraint = constraint
        self.iou_threshold = iou_threshold
        self.semi_threshold = semi_threshold
        self.recalls = {k: [] for k in KS}
        self.hits = {k: [0] * NUM_PREDICATES for k in KS}
        self.counts = {k: [0] * NUM_PREDICATES for k in KS}

    def add_video(self, gt_annotation: list, pred: dict) -> None:
        """Scores each frame of one video (reference input formats)."""
        predcls = self.mode == "predcls"
        boxes = _as_list(pred["boxes"])
        classes = _as_list(pred["labels"] if predcls else pred["pred_labels"])
        scores_np = np.asarray(_numpy(pred["scores"] if predcls else pred["pred_scores"]))
        pairs = _as_list(pred["pair_idx"])
        im_idx = _as_list(pred["im_idx"])
        attention = _as_list(pred["attention_distribution"])
        spatial = _as_list(pred["spatial_distribution"])
        contacting = _as_list(pred["contacting_distribution"])
        for f, frame in enumerate(gt_annotation):
            gt_boxes, gt_classes, gt_rels = self._frame_gt(frame)
            frame_pairs = [p for p in range(len(pairs)) if im_idx[p] == f]
            rows = []
            for p in frame_pairs:
                rows.append((pairs[p][0], pairs[p][1], attention[p] + [0.0] * 23))
            for p in frame_pairs:
                rows.append((pairs[p][1], pairs[p][0], [0.0] * 3 + spatial[p] + [0.0] * 17))
            for p in frame_pairs:
                rows.append((pairs[p][0], pairs[p][1], [0.0] * 9 + contacting[p]))
            preds = self._select(rows, scores_np)
            ranked = self._rank(preds, scores_np)
            first_rank = []
            for sub, obj, predicate in gt_rels:
                best = None
                for rank, (p_sub, p_obj, p_pred, _) in enumerate(ranked):
                    if (classes[p_sub] == gt_classes[sub] and p_pred == predicate and classes[p_obj] == gt_classes[obj]
                            and iou_plus1(gt_boxes[sub], boxes[p_sub][1:]) >= self.iou_threshold
                            and iou_plus1(gt_boxes[obj], boxes[p_obj][1:]) >= self.iou_threshold):
                        best = rank
                        break
                first_rank.append(best)
            for k in KS:
                matched = 0
                for (_, _, predicate), best in zip(gt_rels, first_rank):
                    self.counts[k][predicate] += 1
                    if best is not None and best < k:
                        self.hits[k][predicate] += 1
                        matched += 1
                self.recalls[k].append(matched / len(gt_rels))

    @staticmethod
    def _frame_gt(frame: list) -> tuple[list, list, list]:
        gt_boxes = [[float(v) for v in np.asarray(frame[0]["person_bbox"]).reshape(-1)]]
        gt_classes = [1]
        gt_rels = []
        for m, obj in enumerate(frame[1:], start=1):
            gt_boxes.append([float(v) for v in np.asarray(obj["bbox"]).reshape(-1)])
            gt_classes.append(int(obj["class"]))
            attention = _as_list(obj["attention_relationship"])
            if len(attention) != 1:
                raise ValueError("exactly one attention label per object is required")
            gt_rels.append((0, m, attention[0]))
            for s in _as_list(obj["spatial_relationship"]):
                gt_rels.append((m, 0, 3 + s))
            for c in _as_list(obj["contacting_relationship"]):
                gt_rels.append((0, m, 9 + c))
        return gt_boxes, gt_classes, gt_rels

    def _select(self, rows: list, scores_np: np.ndarray) -> list:
        preds = []
        if self.constraint == "with":
            for sub, obj, s in rows:
                k = max(range(NUM_PREDICATES), key=lambda j: (s[j], -j))
                preds.append((sub, obj, k, s[k]))
        elif self.constraint == "semi":
            for sub, obj, s in rows:
                if s[0] + s[1] > 0:
                    k = max(range(NUM_PREDICATES), key=lambda j: (s[j], -j))
                    preds.append((sub, obj, k, s[k]))
                elif s[3] + s[4] > 0 or s[9] + s[10] > 0:
                    for k in range(NUM_PREDICATES):
                        if s[k] > self.semi_threshold:
                            preds.append((sub, obj, k, s[k]))
        else:
            cells = []
            for sub, obj, s in rows:
                pair_score = float(scores_np[sub] * scores_np[obj])     # in the scores' own precision
                for k in range(NUM_PREDICATES):
                    cells.append((pair_score * s[k], sub, obj, k, s[k]))
            order = sorted(range(len(cells)), key=lambda i: -cells[i][0])[:100]
            preds = [cells[i][1:] for i in order]
        return preds

    @staticmethod
    def _rank(preds: list, scores_np: np.ndarray) -> list:
        overall = [float(scores_np[sub]) * float(scores_np[obj]) * score for sub, obj, _, score in preds]
        order = sorted(range(len(preds)), key=lambda i: (overall[i], i), reverse=True)
        return [preds[i] for i in order]

    def summary(self) -> dict:
        """Same layout as SceneGraphEvaluator.summary (R, mR, per_predicate)."""
        out = {"R": {}, "mR": {}, "per_predicate": {}}
        for k in KS:
            out["R"][k] = float(np.mean(self.recalls[k])) if self.recalls[k] else float("nan")
            per = [self.hits[k][p] / (self.counts[k][p] + 1e-10) for p in range(NUM_PREDICATES)]
            total = 0.0
            for value in per:
                total += value
            out["mR"][k] = total / NUM_PREDICATES
            out["per_predicate"][k] = per
        return out


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
