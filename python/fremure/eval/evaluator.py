"""Video scene-graph evaluator: R@K, mR@K and per-predicate recall on Action Genome (docs/ag_and_eval.md section 3).

``SceneGraphEvaluator`` is a drop-in for the STTran/TEMPURA/FReMuRe ``BasicSceneGraphEvaluator``:
``add_video(gt_annotation, pred)`` takes the same inputs as ``evaluate_scene_graph`` and the numbers
are those of the TEMPURA/FReMuRe evaluator, bit for bit (ties in the ranking follow one documented
rule, see ``matching.rank_in_frames``). Videos are queued and scored in vectorised passes over all
frames of a batch of videos; there is no Python loop over frames or triplets.

Definitions (reference semantics):
- R@K: mean over all scored frames of (#GT triplets matched by the frame's top-K predictions) / #GT.
- per-predicate recall at K: hits / (GT count + 1e-10), pooled over every frame seen; mR@K: their
  mean over all 26 predicates, including predicates never seen in GT (they count as 0).

``mean_recall`` and ``mean_recall_predicates`` select other published conventions of mR@K (the
pooled one above is the default, TEMPURA's and FReMuRe's; STTran's evaluator has no mR@K):
'per_frame' averages each predicate's recall over the frames holding it, 'seen' averages over the
predicates with at least one GT triplet (docs/ag_and_eval.md 3.5 works an example).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .classes import NUM_PREDICATES, PREDICATES
from .inputs import (MODES, GTBatch, PackedGT, PackedPrediction, gt_batch, pack_gt, pack_prediction,
                     prediction_batch)
from .matching import KeyIndex, first_match_rank, predicate_masks, rank_in_frames, triplet_keys
from .triplets import CONSTRAINTS, SEMI_ROW_TYPES, ScoreBlocks, predict_triplets, ranking_score, score_blocks

KS: tuple[int, ...] = (10, 20, 50, 100)
EMPTY_GT_POLICIES = ("raise", "skip")
# How a predicate's recall is aggregated over frames: 'pooled' = sum of hits / sum of GT counts over
# all frames (TEMPURA/FReMuRe); 'per_frame' = mean over the frames holding the predicate of that
# frame's hits / GT count (the per-image convention of image scene-graph benchmarks).
MEAN_RECALL_AGGREGATIONS = ("pooled", "per_frame")
# Which predicates the mean runs over: 'all' 26 (unseen ones count 0, TEMPURA/FReMuRe) or 'seen'
# (those with at least one GT triplet).
MEAN_RECALL_PREDICATES = ("all", "seen")
# mR@K as each published evaluator computes it (None: it has no mR@K), for docs, CLI help and tests.
PUBLISHED_MEAN_RECALL: dict[str, tuple[str, str] | None] = {
    "sttran": None, "tempura": ("pooled", "all"), "fremure": ("pooled", "all")}

GTInput = Sequence[Sequence[Mapping[str, Any]]] | PackedGT
PredInput = Mapping[str, Any] | PackedPrediction


class _Batch:
    """Queued videos joined into one; the parts every constraint needs are computed once, on demand."""

    def __init__(self, videos: list[tuple[PackedGT, PackedPrediction]]) -> None:
        self.gt = gt_batch([gt for gt, _ in videos])
        self.pred = prediction_batch([pred for _, pred in videos])

    @functools.cached_property
    def blocks(self) -> ScoreBlocks:
        return score_blocks(self.pred)

    @functools.cached_property
    def class_range(self) -> tuple[int, int]:
        """(lowest class, number of classes) over GT and predicted labels, for the triplet keys."""
        gt, pred = self.gt.classes, self.pred.classes
        low = min(int(gt.min(initial=0)), int(pred.min(initial=0)))
        num_classes = max(int(gt.max(initial=0)), int(pred.max(initial=0))) - low + 1
        if num_classes ** 2 * NUM_PREDICATES * (self.gt.num_frames + 1) >= 2 ** 62:
            raise ValueError(f"labels span {num_classes} values: too many for the int64 triplet keys")
        return low, num_classes

    def _pair_keys(self, frame: np.ndarray, classes: np.ndarray, subject: np.ndarray, obj: np.ndarray) -> np.ndarray:
        low, num_classes = self.class_range
        return triplet_keys(frame, classes[subject] - low, 0, classes[obj] - low, num_classes, 1)

    @functools.cached_property
    def row_predicates(self) -> np.ndarray:
        """``[3P]`` int64: per score row (index ``3 * pair + block``), the bit mask of the predicates that
        GT triplets of the frame carry between the row's subject and object classes. A prediction can
        only match a GT triplet if its predicate's bit is set."""
        gt, blocks = self.gt, self.blocks
        gt_keys = self._pair_keys(gt.rel_frame, gt.classes, gt.rel_subject, gt.rel_object)
        rows = [self._pair_keys(blocks.frame, self.pred.classes, *blocks.subject_object(b)) for b in range(3)]
        return predicate_masks(gt_keys, gt.rel_predicate, np.stack(rows, axis=1).ravel())

    @functools.cached_property
    def gt_index(self) -> KeyIndex:
        gt = self.gt
        low, num_classes = self.class_range
        return KeyIndex.build(triplet_keys(gt.rel_frame, gt.classes[gt.rel_subject] - low, gt.rel_predicate,
                                           gt.classes[gt.rel_object] - low, num_classes, NUM_PREDICATES))


class _Queue:
    """Videos waiting to be scored together (amortises numpy's per-call cost; changes no number)."""

    def __init__(self, batch_frames: int) -> None:
        self.batch_frames = batch_frames
        self.videos: list[tuple[PackedGT, PackedPrediction]] = []
        self.frames = 0

    def push(self, gt: PackedGT, pred: PackedPrediction, flush: Callable[[], None]) -> None:
        # The 'no' cut multiplies object scores in their own precision: never mix dtypes in a batch.
        if self.videos and pred.object_scores.dtype != self.videos[0][1].object_scores.dtype:
            flush()
        self.videos.append((gt, pred))
        self.frames += gt.num_frames
        if self.frames >= self.batch_frames:
            flush()

    def take(self) -> _Batch | None:
        if not self.videos:
            return None
        batch = _Batch(self.videos)
        self.videos, self.frames = [], 0
        return batch


class SceneGraphEvaluator:
    """Accumulates R@K / mR@K over videos for one mode and one graph constraint.

    Args:
        mode: 'predcls' (reads ``labels``/``scores``), 'sgcls' or 'sgdet' (read ``pred_labels``/``pred_scores``).
        constraint: 'with' (arg-max predicate per row), 'semi' (attention arg-max plus every spatial /
            contacting probability ``> semi_threshold``) or 'no' (top ``no_top`` cells per frame).
        iou_threshold: both subject and object IoU ("+1" convention) must be ``>=`` this to match.
        semi_threshold: threshold of the 'semi' constraint (0.9 in the published test.py), ``>= 0``.
        epoch_reset: what ``reset()`` clears. ``False`` (default) reproduces the reference, whose
            ``reset_result()`` clears only the per-frame recalls: per-predicate hits and counts, hence
            mR@K, keep accumulating over every video since construction (in the published train.py,
            over all epochs; docs/ag_and_eval.md Q-E1). ``True`` makes ``reset()`` clear everything, so mR@K covers
            only the videos added since the last reset.
        attention_logits: the attention input is logits (STTran models); it is softmaxed first, as the
            STTran evaluator does. Default ``False``: probabilities, as TEMPURA/FReMuRe models give.
        semi_row_type: 'scores' (default, reference) infers a row's kind from its scores (Q-E3);
            'block' uses the row's position (identical for strictly positive probabilities).
        on_empty_gt: 'raise' (default) rejects a frame without GT triplets, which the reference cannot
            score; 'skip' leaves such frames out of every statistic.
        mean_recall: how a predicate's recall is aggregated over frames: 'pooled' (default, reference:
            hits and GT counts summed over all frames, then divided) or 'per_frame' (each frame's
            hits / GT count of the predicate, averaged over the frames holding it).
        mean_recall_predicates: what mR@K averages over: 'all' 26 predicates (default, reference;
            a predicate without GT counts 0) or 'seen' (those with at least one GT triplet).
        no_top: cells kept per frame by the 'no' constraint (100 in the reference).
        ks: the K values.
        batch_frames: queued videos are scored together once this many frames are waiting (and
            whenever a result is read); this only amortises numpy's per-call cost.
    """

    def __init__(self, mode: str, constraint: str = "with", iou_threshold: float = 0.5,
                 semi_threshold: float = 0.9, *, epoch_reset: bool = False, attention_logits: bool = False,
                 semi_row_type: str = "scores", on_empty_gt: str = "raise", mean_recall: str = "pooled",
                 mean_recall_predicates: str = "all", no_top: int = 100, ks: Sequence[int] = KS,
                 batch_frames: int = 4096) -> None:
        _check_choice("mode", mode, MODES)
        _check_choice("mean_recall", mean_recall, MEAN_RECALL_AGGREGATIONS)
        _check_choice("mean_recall_predicates", mean_recall_predicates, MEAN_RECALL_PREDICATES)
        _check_choice("constraint", constraint, CONSTRAINTS)
        _check_choice("semi_row_type", semi_row_type, SEMI_ROW_TYPES)
        _check_choice("on_empty_gt", on_empty_gt, EMPTY_GT_POLICIES)
        for name, value in (("iou_threshold", iou_threshold), ("semi_threshold", semi_threshold)):
            if not isinstance(value, numbers.Real) or not np.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        if semi_threshold < 0:
            raise ValueError(f"semi_threshold: expected a number >= 0, got {semi_threshold!r}")
        for name, value in (("no_top", no_top), ("batch_frames", batch_frames)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        ks = tuple(ks)
        if not ks or len(set(ks)) != len(ks) or any(not isinstance(k, int) or k < 1 for k in ks):
            raise ValueError(f"ks: expected distinct positive ints, got {ks!r}")
        self.mode, self.constraint, self.semi_row_type, self.on_empty_gt = mode, constraint, semi_row_type, on_empty_gt
        self.iou_threshold, self.semi_threshold = float(iou_threshold), float(semi_threshold)
        self.epoch_reset, self.attention_logits = bool(epoch_reset), bool(attention_logits)
        self.mean_recall, self.mean_recall_predicates = mean_recall, mean_recall_predicates
        self.no_top, self.ks = no_top, ks
        self._k_sorted = np.sort(np.asarray(ks, dtype=np.int64))
        self._k_rank = np.searchsorted(self._k_sorted, np.asarray(ks, dtype=np.int64))   # K order as given
        self._queue = _Queue(batch_frames)
        self._upstream: Callable[[], None] | None = None     # a MultiConstraintEvaluator's flush
        self._recalls: list[np.ndarray] = []
        self._hits = np.zeros((len(ks), NUM_PREDICATES), dtype=np.int64)
        self._counts = np.zeros((len(ks), NUM_PREDICATES), dtype=np.int64)
        # for mean_recall='per_frame': per K and predicate, the sum over frames of hits / GT count,
        # and the number of frames holding the predicate
        self._frame_recall_sums = np.zeros((len(ks), NUM_PREDICATES), dtype=np.float64)
        self._frames_with = np.zeros(NUM_PREDICATES, dtype=np.int64)

    def add_video(self, gt_annotation: GTInput, pred: PredInput) -> None:
        """Adds one video. Inputs are checked now; scoring runs in batches of videos (see ``batch_frames``).

        Args:
            gt_annotation: the video's ``gt_annotations`` entry (docs/ag_and_eval.md 1.8), or ``pack_gt`` of it.
            pred: the model's ``entry`` dict (docs/ag_and_eval.md 2.6), numpy arrays or torch tensors on any device (not
                modified), or ``pack_prediction`` of it. Several evaluators scoring the same videos
                should share the conversion: ``MultiConstraintEvaluator`` does.
        """
        gt, packed = self._pack(gt_annotation, pred)
        self._queue.push(gt, packed, self._flush)

    def _pack(self, gt_annotation: GTInput, pred: PredInput) -> tuple[PackedGT, PackedPrediction]:
        gt = gt_annotation if isinstance(gt_annotation, PackedGT) else \
            pack_gt(gt_annotation, allow_empty_frames=self.on_empty_gt == "skip")
        if self.on_empty_gt == "raise" and not gt.objects_per_frame.all():
            raise ValueError(f"gt_annotation: frame {int(np.flatnonzero(gt.objects_per_frame == 0)[0])} "
                             "has no object, hence no GT triplet")
        if not isinstance(pred, PackedPrediction):
            return gt, pack_prediction(pred, self.mode, gt.num_frames, self.attention_logits)
        if (pred.mode, pred.attention_logits, pred.num_frames) != (self.mode, self.attention_logits, gt.num_frames):
            raise ValueError(f"pred: packed for mode={pred.mode!r}, attention_logits={pred.attention_logits}, "
                             f"{pred.num_frames} frames; this evaluator needs mode={self.mode!r}, "
                             f"attention_logits={self.attention_logits}, {gt.num_frames} frames")
        return gt, pred

    def _flush(self) -> None:
        """Scores every queued video (here and upstream) and adds it to the totals."""
        if self._upstream is not None:
            self._upstream()
        batch = self._queue.take()
        if batch is not None:
            self._consume(batch)

    def _consume(self, batch: _Batch) -> None:
        gt, pred = batch.gt, batch.pred
        triplets = predict_triplets(batch.blocks, pred.object_scores, self.constraint, self.semi_threshold,
                                    self.semi_row_type, self.no_top)
        rank = rank_in_frames(triplets.frame, ranking_score(triplets, batch.blocks, pred.object_scores),
                              triplets.emission)
        # Only predictions whose labels occur in their frame's GT can match; the rest are skipped.
        useful = np.flatnonzero((batch.row_predicates[3 * triplets.pair + triplets.block] >> triplets.predicate) & 1)
        subject, obj = triplets.subject_object(batch.blocks, useful)
        low, num_classes = batch.class_range
        pred_keys = triplet_keys(triplets.frame[useful], pred.classes[subject] - low, triplets.predicate[useful],
                                 pred.classes[obj] - low, num_classes, NUM_PREDICATES)
        best = first_match_rank(batch.gt_index, gt.boxes, gt.rel_subject, gt.rel_object, pred_keys, rank[useful],
                                pred.boxes, subject, obj, self.iou_threshold)
        self._accumulate(gt, best)

    def _accumulate(self, gt: GTBatch, best: np.ndarray) -> None:
        # Recall is nested in K: a GT found at rank r counts for every K > r. ``level`` = how many of
        # the (ascending) K miss it, so per-K totals are cumulative sums of level histograms.
        num_k = len(self.ks)
        level = np.searchsorted(self._k_sorted, best, side="right")
        by_frame = np.bincount(gt.rel_frame * (num_k + 1) + level, minlength=gt.num_frames * (num_k + 1))
        hits_per_frame = np.cumsum(by_frame.reshape(gt.num_frames, num_k + 1), axis=1)[:, :num_k].T
        by_predicate = np.bincount(gt.rel_predicate * (num_k + 1) + level, minlength=NUM_PREDICATES * (num_k + 1))
        by_predicate = by_predicate.reshape(NUM_PREDICATES, num_k + 1)
        hits = np.cumsum(by_predicate, axis=1)[:, :num_k].T                           # [K sorted, 26]
        scored = gt.rels_per_frame > 0
        recall = hits_per_frame[:, scored] / gt.rels_per_frame[None, scored]
        self._recalls.append(recall[self._k_rank])
        self._hits += hits[self._k_rank]
        self._counts += by_predicate.sum(axis=1)[None, :]
        if self.mean_recall == "per_frame":
            self._accumulate_per_frame(gt, level)

    def _accumulate_per_frame(self, gt: GTBatch, level: np.ndarray) -> None:
        """Adds each frame's per-predicate recall (hits / GT count of the predicate in the frame)."""
        num_k = len(self.ks)
        cell = (gt.rel_frame * NUM_PREDICATES + gt.rel_predicate) * (num_k + 1) + level
        by_cell = np.bincount(cell, minlength=gt.num_frames * NUM_PREDICATES * (num_k + 1))
        by_cell = by_cell.reshape(gt.num_frames, NUM_PREDICATES, num_k + 1)
        hits = np.cumsum(by_cell, axis=2)[:, :, :num_k]                                # [F, 26, K sorted]
        counts = by_cell.sum(axis=2)                                                   # [F, 26]
        held = counts > 0
        ratios = np.where(held[:, :, None], hits / np.maximum(counts, 1)[:, :, None], 0.0)
        self._frame_recall_sums += ratios.sum(axis=0).T[self._k_rank]
        self._frames_with += held.sum(axis=0)

    def reset(self, counts: bool | None = None) -> None:
        """Starts a new evaluation round (queued videos are scored first). ``counts``: also clear the
        per-predicate hits and counts (mR@K); ``None`` follows ``epoch_reset`` (default ``False``:
        reference behaviour, mR@K keeps accumulating)."""
        self._flush()
        self._recalls = []
        if self.epoch_reset if counts is None else counts:
            self._hits[:] = 0
            self._counts[:] = 0
            self._frame_recall_sums[:] = 0
            self._frames_with[:] = 0

    @property
    def num_frames(self) -> int:
        """Number of frames in the R@K average since the last reset."""
        self._flush()
        return sum(r.shape[1] for r in self._recalls)

    @property
    def frame_recalls(self) -> dict[int, np.ndarray]:
        """``{K: [frames] float64}`` recall of every scored frame since the last reset, in order."""
        self._flush()
        stacked = np.concatenate(self._recalls, axis=1) if self._recalls else np.zeros((len(self.ks), 0))
        return {k: stacked[i] for i, k in enumerate(self.ks)}

    @property
    def hits(self) -> dict[int, np.ndarray]:
        """``{K: [26] int64}`` matched GT triplets per predicate (accumulated, see ``epoch_reset``)."""
        self._flush()
        return {k: self._hits[i].copy() for i, k in enumerate(self.ks)}

    @property
    def counts(self) -> dict[int, np.ndarray]:
        """``{K: [26] int64}`` GT triplets per predicate (accumulated, see ``epoch_reset``)."""
        self._flush()
        return {k: self._counts[i].copy() for i, k in enumerate(self.ks)}

    def summary(self) -> dict[str, Any]:
        """The metrics so far.

        Returns:
            ``{"R": {K: float}, "mR": {K: float}, "per_predicate": {K: [26 floats]}, "num_frames": int,
            "mode": str, "constraint": str, "mean_recall": str, "mean_recall_predicates": str}``. R@K
            is NaN before any frame; per-predicate values (aggregated as ``mean_recall`` says) are in
            the order of ``classes.PREDICATES``; mR@K is NaN with 'seen' before any GT triplet.
        """
        recalls = self.frame_recalls      # scores the queued videos
        per_predicate = self._per_predicate()
        return {"R": {k: float(np.mean(recalls[k])) if recalls[k].size else float("nan") for k in self.ks},
                "mR": {k: float(v) for k, v in zip(self.ks, self._mean_over_predicates(per_predicate))},
                "per_predicate": {k: per_predicate[i].tolist() for i, k in enumerate(self.ks)},
                "num_frames": int(recalls[self.ks[0]].shape[0]), "mode": self.mode, "constraint": self.constraint,
                "mean_recall": self.mean_recall, "mean_recall_predicates": self.mean_recall_predicates}

    def _per_predicate(self) -> np.ndarray:
        """``[K, 26]`` recall per predicate, aggregated over frames as ``mean_recall`` says."""
        if self.mean_recall == "per_frame":
            return self._frame_recall_sums / np.maximum(self._frames_with, 1)[None, :]
        return self._hits / (self._counts + 1e-10)

    def _mean_over_predicates(self, per_predicate: np.ndarray) -> np.ndarray:
        """``[K]`` mR@K: the mean over all 26 predicates or over those seen in GT."""
        if self.mean_recall_predicates == "seen":
            seen = self._counts[0] > 0          # every K counts the same GT triplets
            if not seen.any():
                return np.full(len(self.ks), np.nan)
            per_predicate, number = per_predicate[:, seen], int(seen.sum())
        else:
            number = NUM_PREDICATES
        # Sequential sum over predicates (np.add.accumulate), the reference's order of additions.
        return np.add.accumulate(per_predicate, axis=1)[:, -1] / number

    def per_predicate_recall(self, k: int) -> dict[str, float]:
        """``{predicate name: recall at k}``, the content of the reference's per-class pickles."""
        if k not in self.ks:
            raise ValueError(f"k: expected one of {self.ks}, got {k!r}")
        return dict(zip(PREDICATES, self.summary()["per_predicate"][k]))

    def __repr__(self) -> str:
        return (f"SceneGraphEvaluator(mode={self.mode!r}, constraint={self.constraint!r}, "
                f"iou_threshold={self.iou_threshold}, epoch_reset={self.epoch_reset}, "
                f"mean_recall={self.mean_recall!r}, mean_recall_predicates={self.mean_recall_predicates!r})")


class MultiConstraintEvaluator:
    """One ``SceneGraphEvaluator`` per constraint (with / semi / no, as test.py), sharing all input work.

    Each video is converted once and each batch is joined and indexed once for all constraints, which
    is much faster than three independent evaluators; the numbers are the same.

    Args:
        mode: as for ``SceneGraphEvaluator``.
        constraints: one evaluator per constraint, in this order.
        batch_frames: as for ``SceneGraphEvaluator``.
        **options: passed to every evaluator (iou_threshold, semi_threshold, epoch_reset, ...).
    """

    def __init__(self, mode: str, constraints: Sequence[str] = CONSTRAINTS, batch_frames: int = 4096,
                 **options: Any) -> None:
        constraints = tuple(constraints)
        if not constraints or len(set(constraints)) != len(constraints):
            raise ValueError(f"constraints: expected distinct constraints, got {constraints!r}")
        self.evaluators = {c: SceneGraphEvaluator(mode, c, batch_frames=batch_frames, **options)
                           for c in constraints}
        for evaluator in self.evaluators.values():
            evaluator._upstream = self._flush
        self._first = next(iter(self.evaluators.values()))
        self._queue = _Queue(batch_frames)

    def add_video(self, gt_annotation: GTInput, pred: PredInput) -> None:
        """Adds one video to every evaluator (same inputs as ``SceneGraphEvaluator.add_video``)."""
        gt, packed = self._first._pack(gt_annotation, pred)
        self._queue.push(gt, packed, self._flush)

    def _flush(self) -> None:
        batch = self._queue.take()
        if batch is not None:
            for evaluator in self.evaluators.values():
                evaluator._consume(batch)

    def reset(self, counts: bool | None = None) -> None:
        """``reset`` of every evaluator."""
        for evaluator in self.evaluators.values():
            evaluator.reset(counts)

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{constraint: SceneGraphEvaluator.summary()}``, the input of the ``report`` functions."""
        return {c: evaluator.summary() for c, evaluator in self.evaluators.items()}

    def __getitem__(self, constraint: str) -> SceneGraphEvaluator:
        return self.evaluators[constraint]


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
