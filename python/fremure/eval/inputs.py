"""Conversion of the reference input formats into flat arrays.

``pack_gt`` reads one video of ``gt_annotations`` (docs/ag_and_eval.md 1.8: a list of frames, each
``[person dict, object dict, ...]``) and ``pack_prediction`` reads a model's ``entry`` dict (docs/ag_and_eval.md 2.6),
with numpy arrays or torch tensors on any device. Both check their input at once and name the
offending field, frame or object in the error. Everything derived from them is computed later, for a
whole batch of videos at a time (``gt_batch``, ``prediction_batch``), so the per-video cost is
little more than reading the Python objects.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .classes import (CONTACTING_OFFSET, NUM_ATTENTION, NUM_CONTACTING, NUM_SPATIAL, PERSON_CLASS,
                      SPATIAL_OFFSET)

MODES = ("predcls", "sgcls", "sgdet")
_OBJECT_FIELDS = ("bbox", "class", "attention_relationship", "spatial_relationship", "contacting_relationship")


@dataclasses.dataclass(frozen=True)
class PackedGT:
    """One video's GT annotation as flat, checked arrays.

    Attributes:
        num_frames: T.
        person_boxes: ``[T, 4]`` float64 xyxy, the person box of each frame.
        object_boxes: ``[O, 4]`` float64 xyxy, every object of every frame, frame by frame.
        object_classes: ``[O]`` int64.
        objects_per_frame: ``[T]`` int64.
        attention: ``[O]`` int64 attention label (group-local, 0..2) of each object.
        spatial, spatial_per_object: ``[S]`` int64 spatial labels (0..5), object by object, and ``[O]`` counts.
        contacting, contacting_per_object: ``[C]`` int64 contacting labels (0..16) and ``[O]`` counts.
    """

    num_frames: int
    person_boxes: np.ndarray
    object_boxes: np.ndarray
    object_classes: np.ndarray
    objects_per_frame: np.ndarray
    attention: np.ndarray
    spatial: np.ndarray
    spatial_per_object: np.ndarray
    contacting: np.ndarray
    contacting_per_object: np.ndarray


@dataclasses.dataclass(frozen=True)
class PackedPrediction:
    """One video's predictions as checked numpy arrays, in the dtypes given.

    Attributes:
        boxes: ``[N, 5]`` (frame, x1, y1, x2, y2) ``entry['boxes']``.
        classes: ``[N]`` integer labels (``labels`` in predcls, ``pred_labels`` otherwise).
        object_scores: ``[N]`` float (``scores`` / ``pred_scores``), kept in the input precision because
            the reference multiplies them in it for the 'no' cut.
        pairs: ``[P, 2]`` integer (subject row, object row).
        im_idx: ``[P]`` frame of each pair as given (float in the reference).
        attention, spatial, contacting: ``[P, 3]``, ``[P, 6]``, ``[P, 17]`` float probabilities (attention
            already softmaxed when given as logits).
        num_frames: T of the video.
        mode: the mode whose label/score fields were read.
        attention_logits: whether the attention input was softmaxed here.
    """

    boxes: np.ndarray
    classes: np.ndarray
    object_scores: np.ndarray
    pairs: np.ndarray
    im_idx: np.ndarray
    attention: np.ndarray
    spatial: np.ndarray
    contacting: np.ndarray
    num_frames: int
    mode: str
    attention_logits: bool


@dataclasses.dataclass(frozen=True)
class GTBatch:
    """GT triplets of one or more videos, frames numbered consecutively.

    Attributes:
        num_frames: total frames.
        boxes: ``[B, 4]`` float64 xyxy box table (all person boxes, then all objects).
        classes: ``[B]`` int64 (person = 1).
        rel_frame: ``[G]`` int64 frame of each GT triplet.
        rel_subject, rel_object: ``[G]`` int64 rows of ``boxes``; spatial triplets are object -> human.
        rel_predicate: ``[G]`` int64 global predicate (0..25).
        rels_per_frame: ``[num_frames]`` int64.

    Triplets are grouped by kind (attention, spatial, contacting) rather than object by object as in
    the reference; no metric depends on the GT order.
    """

    num_frames: int
    boxes: np.ndarray
    classes: np.ndarray
    rel_frame: np.ndarray
    rel_subject: np.ndarray
    rel_object: np.ndarray
    rel_predicate: np.ndarray
    rels_per_frame: np.ndarray


@dataclasses.dataclass(frozen=True)
class PredictionBatch:
    """Predictions of one or more videos, frames and box rows numbered like ``GTBatch``.

    Attributes:
        boxes: ``[N, 4]`` float64 xyxy.
        classes: ``[N]`` int64.
        object_scores: ``[N]`` float32 or float64 (input precision).
        pairs: ``[P, 2]`` int64 rows of ``boxes``.
        pair_frame: ``[P]`` int64 frame of each pair; -1 where ``im_idx`` is not a frame of its video.
        scores: ``[P, 26]`` float64 attention | spatial | contacting probabilities by global predicate.
        num_frames: total frames.
    """

    boxes: np.ndarray
    classes: np.ndarray
    object_scores: np.ndarray
    pairs: np.ndarray
    pair_frame: np.ndarray
    scores: np.ndarray
    num_frames: int


def to_numpy(value: Any, name: str) -> np.ndarray:
    """A numpy view/copy of a tensor (any device, detached; half types widened to float32) or array-like."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        return value.cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name}: expected a tensor or array, got {type(value).__name__}") from error


def _finite(*arrays: np.ndarray) -> bool:
    """True when no array holds NaN or inf (one float64 sum per array: NaN/inf propagate)."""
    return math.isfinite(sum(float(a.sum(dtype=np.float64)) for a in arrays))


# ---------------------------------------------------------------------------------------------- GT


def pack_gt(gt_annotation: Sequence[Sequence[Mapping[str, Any]]], allow_empty_frames: bool = False) -> PackedGT:
    """Reads and checks one video of ``gt_annotations`` (docs/ag_and_eval.md 1.8).

    Args:
        gt_annotation: list over frames; frame = ``[{'person_bbox': [1,4] or [4]}, {'class': int,
            'bbox': [4] xyxy, 'attention_relationship': 1 index, 'spatial_relationship': indices,
            'contacting_relationship': indices}, ...]`` with group-local relation indices (tensors,
            arrays or lists).
        allow_empty_frames: accept frames with no object (hence no GT triplet); the reference cannot
            score them (it asserts or divides by zero), so by default they raise.
    """
    if not isinstance(gt_annotation, (list, tuple)):
        raise TypeError(f"gt_annotation: expected a list of frames, got {type(gt_annotation).__name__}")
    for f, frame in enumerate(gt_annotation):
        if not isinstance(frame, (list, tuple)) or not frame:
            raise ValueError(f"gt_annotation: frame {f} must be a non-empty list [person dict, objects...]")
    objects_per_frame = np.fromiter(map(len, gt_annotation), dtype=np.int64, count=len(gt_annotation)) - 1
    if not allow_empty_frames and not objects_per_frame.all():
        f = int(np.flatnonzero(objects_per_frame == 0)[0])
        raise ValueError(f"gt_annotation: frame {f} has no object, hence no GT triplet (pass "
                         "on_empty_gt='skip' to the evaluator to leave such frames out)")
    person_boxes = _person_boxes(gt_annotation)
    objects = [obj for frame in gt_annotation for obj in frame[1:]]
    try:
        boxes, classes, attention, spatial, contacting = ([obj[key] for obj in objects] for key in _OBJECT_FIELDS)
    except (KeyError, TypeError):
        _raise_bad_object(gt_annotation)
        raise
    num_objects = len(objects)
    try:
        if (np.fromiter(map(len, boxes), dtype=np.int64, count=num_objects) != 4).any():
            raise ValueError("a 'bbox' does not hold 4 numbers")
        object_boxes = np.concatenate(boxes, dtype=np.float64).reshape(num_objects, 4) if boxes else np.zeros((0, 4))
        object_classes = np.array(classes, dtype=np.int64).reshape(num_objects)
    except (TypeError, ValueError) as error:
        raise ValueError(f"gt_annotation: every object needs a 4-number 'bbox' and an int 'class' ({error})") from None
    if not _finite(person_boxes, object_boxes):
        raise ValueError("gt_annotation: boxes contain NaN or inf")
    packed = PackedGT(len(gt_annotation), person_boxes, object_boxes, object_classes, objects_per_frame,
                      _attention_labels(attention, objects_per_frame),
                      *_index_lists(spatial, "spatial_relationship"),
                      *_index_lists(contacting, "contacting_relationship"))
    _check_label_ranges(packed)
    return packed


def _person_boxes(gt_annotation: Sequence[Sequence[Mapping[str, Any]]]) -> np.ndarray:
    """``[T, 4]`` float64 person box of every frame; exactly one box per frame is required."""
    try:   # fast path for the loader's float32 [1, 4] arrays
        boxes = np.concatenate([frame[0]["person_bbox"] for frame in gt_annotation], dtype=np.float64)
        if boxes.shape == (len(gt_annotation), 4):
            return boxes
    except (KeyError, TypeError, ValueError, IndexError):
        pass
    for f, frame in enumerate(gt_annotation):     # slow path, to name the bad frame
        if not isinstance(frame[0], Mapping) or "person_bbox" not in frame[0]:
            raise ValueError(f"gt_annotation: frame {f} element 0 must be a dict with 'person_bbox'")
        box = to_numpy(frame[0]["person_bbox"], "person_bbox").reshape(-1)
        if box.shape[0] != 4:
            raise ValueError(f"gt_annotation: frame {f} person_bbox must hold exactly one box, "
                             f"got {box.shape[0] / 4:g} boxes")
    return np.array([to_numpy(frame[0]["person_bbox"], "person_bbox").reshape(4) for frame in gt_annotation],
                    dtype=np.float64).reshape(-1, 4)


def _raise_bad_object(gt_annotation: Sequence[Sequence[Mapping[str, Any]]]) -> None:
    for f, frame in enumerate(gt_annotation):
        for m, obj in enumerate(frame[1:], start=1):
            if not isinstance(obj, Mapping) or any(key not in obj for key in _OBJECT_FIELDS):
                raise ValueError(f"gt_annotation: frame {f} element {m} is not an object dict with the keys "
                                 f"{_OBJECT_FIELDS}")


def _index_lists(items: list[Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates a list of 1-d index containers; returns (values int64, length of each item)."""
    if not items:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    try:
        values = torch.cat(items)     # fast path: every item is a 1-d tensor, as the AG loader makes
        if values.dim() == 1 and not values.is_floating_point():
            lengths = np.fromiter(map(torch.Tensor.numel, items), dtype=np.int64, count=len(items))
            return values.numpy().astype(np.int64, copy=False), lengths
    except (TypeError, RuntimeError):
        pass
    arrays = [to_numpy(item, name).reshape(-1) for item in items]
    lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
    values = np.concatenate(arrays) if arrays else np.zeros(0)
    if values.size and not np.all(values == np.round(values)):
        raise ValueError(f"gt_annotation: {name} indices must be integers")
    return values.astype(np.int64), lengths


def _attention_labels(items: list[Any], objects_per_frame: np.ndarray) -> np.ndarray:
    """``[O]`` int64 attention label of each object; exactly one per object is required (docs/ag_and_eval.md Q-D4)."""
    values, lengths = _index_lists(items, "attention_relationship")
    if (lengths != 1).any():
        obj = int(np.flatnonzero(lengths != 1)[0])
        frame = int(np.searchsorted(np.cumsum(objects_per_frame), obj, side="right"))
        raise ValueError(f"gt_annotation: object {obj} (frame {frame}) has {int(lengths[obj])} attention "
                         "labels; exactly one is required")
    return values


def _check_label_ranges(gt: PackedGT) -> None:
    for name, values, size in (("attention_relationship", gt.attention, NUM_ATTENTION),
                               ("spatial_relationship", gt.spatial, NUM_SPATIAL),
                               ("contacting_relationship", gt.contacting, NUM_CONTACTING)):
        if values.size and (values.min() < 0 or values.max() >= size):
            bad = int(values[(values < 0) | (values >= size)][0])
            raise ValueError(f"gt_annotation: {name} index {bad} is outside 0..{size - 1}")


def gt_batch(videos: Sequence[PackedGT]) -> GTBatch:
    """The GT triplets of several videos, frames and box rows numbered consecutively in the given order.

    Per object m of a frame: one attention triplet (human -> m), one spatial triplet per spatial label
    (m -> human, i.e. reversed) and one contacting triplet per contacting label (human -> m).
    """
    num_frames = int(sum(v.num_frames for v in videos))
    person_boxes = np.concatenate([v.person_boxes for v in videos])
    object_boxes = np.concatenate([v.object_boxes for v in videos])
    objects_per_frame = np.concatenate([v.objects_per_frame for v in videos])
    num_objects = object_boxes.shape[0]
    obj_frame = np.repeat(np.arange(num_frames, dtype=np.int64), objects_per_frame)
    objects = np.arange(num_objects, dtype=np.int64)
    spa_obj = np.repeat(objects, np.concatenate([v.spatial_per_object for v in videos]))
    con_obj = np.repeat(objects, np.concatenate([v.contacting_per_object for v in videos]))
    rel_object_of = np.concatenate([objects, spa_obj, con_obj])
    rel_frame = obj_frame[rel_object_of]
    human = rel_frame                                  # the person box of frame f is row f
    thing = num_frames + rel_object_of                 # objects follow the T person boxes
    is_spatial = np.zeros(rel_object_of.shape[0], dtype=bool)
    is_spatial[num_objects:num_objects + spa_obj.shape[0]] = True
    predicates = ([v.attention for v in videos] + [v.spatial + SPATIAL_OFFSET for v in videos]
                  + [v.contacting + CONTACTING_OFFSET for v in videos])
    classes = [np.full(num_frames, PERSON_CLASS, dtype=np.int64)] + [v.object_classes for v in videos]
    return GTBatch(num_frames=num_frames, boxes=np.concatenate([person_boxes, object_boxes]),
                   classes=np.concatenate(classes), rel_frame=rel_frame, rel_subject=np.where(is_spatial, thing, human),
                   rel_object=np.where(is_spatial, human, thing), rel_predicate=np.concatenate(predicates),
                   rels_per_frame=np.bincount(rel_frame, minlength=num_frames))


# ------------------------------------------------------------------------------------- predictions


def _field(pred: Mapping[str, Any], key: str) -> np.ndarray:
    """A private copy: scoring is deferred, and the caller may reuse its tensors meanwhile."""
    if key not in pred:
        raise ValueError(f"pred: missing key '{key}'")
    return np.array(to_numpy(pred[key], f"pred['{key}']"))


def _distribution(pred: Mapping[str, Any], key: str, width: int, num_pairs: int) -> np.ndarray:
    value = _field(pred, key)
    if value.shape != (num_pairs, width):
        raise ValueError(f"pred['{key}']: expected shape [{num_pairs}, {width}], got {list(value.shape)}")
    if value.dtype.kind != "f":
        raise TypeError(f"pred['{key}']: expected a floating dtype, got {value.dtype}")
    return value


def pack_prediction(pred: Mapping[str, Any], mode: str, num_frames: int,
                    attention_logits: bool = False) -> PackedPrediction:
    """Reads and checks the evaluator's fields of an ``entry`` dict (docs/ag_and_eval.md 2.6) for one video.

    Args:
        pred: dict with ``boxes [N,5]`` (frame, x1, y1, x2, y2 in original pixels), ``pair_idx [P,2]``,
            ``im_idx [P]``, ``attention_distribution [P,3]``, ``spatial_distribution [P,6]``,
            ``contacting_distribution [P,17]`` and, for predcls, ``labels``/``scores`` ``[N]``, else
            ``pred_labels``/``pred_scores``. Tensors (any device) or arrays.
        mode: 'predcls', 'sgcls' or 'sgdet'.
        num_frames: T of the GT video; pairs whose ``im_idx`` is not one of 0..T-1 are ignored, as in
            the reference (which compares the float ``im_idx`` with each frame index).
        attention_logits: the attention input is logits (STTran); softmax it first, in its own dtype
            with torch, as the STTran evaluator does.
    """
    if not isinstance(pred, Mapping):
        raise TypeError(f"pred: expected a dict, got {type(pred).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    boxes = _field(pred, "boxes")
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"pred['boxes']: expected shape [N, 5], got {list(boxes.shape)}")
    num_boxes = boxes.shape[0]
    label_key, score_key = ("labels", "scores") if mode == "predcls" else ("pred_labels", "pred_scores")
    classes = _field(pred, label_key).reshape(-1)
    scores = _field(pred, score_key).reshape(-1)
    if classes.shape[0] != num_boxes or scores.shape[0] != num_boxes:
        raise ValueError(f"pred['{label_key}'] and pred['{score_key}'] need {num_boxes} entries (one per box), "
                         f"got {classes.shape[0]} and {scores.shape[0]}")
    if classes.dtype.kind not in "iub" and not np.array_equal(classes, np.round(classes)):
        raise ValueError(f"pred['{label_key}']: labels must be integers")
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)

    pairs = _field(pred, "pair_idx")
    pairs = pairs.reshape(-1, 2) if pairs.size == 0 else pairs
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.dtype.kind not in "iu":
        raise ValueError(f"pred['pair_idx']: expected integer shape [P, 2], got {pairs.dtype} {list(pairs.shape)}")
    num_pairs = pairs.shape[0]
    if num_pairs and (pairs.min() < 0 or pairs.max() >= num_boxes):
        raise ValueError(f"pred['pair_idx']: indices must lie in 0..{num_boxes - 1} (rows of pred['boxes'])")
    im_idx = _field(pred, "im_idx").reshape(-1)
    if im_idx.shape[0] != num_pairs:
        raise ValueError(f"pred['im_idx']: expected {num_pairs} entries (one per pair), got {im_idx.shape[0]}")
    attention = _distribution(pred, "attention_distribution", NUM_ATTENTION, num_pairs)
    spatial = _distribution(pred, "spatial_distribution", NUM_SPATIAL, num_pairs)
    contacting = _distribution(pred, "contacting_distribution", NUM_CONTACTING, num_pairs)
    if not _finite(boxes, scores, attention, spatial, contacting):
        raise ValueError(f"pred: 'boxes', '{score_key}' or a relation distribution contains NaN or inf")
    if attention_logits:
        attention = torch.softmax(torch.from_numpy(np.ascontiguousarray(attention)), dim=1).numpy()
    return PackedPrediction(boxes, classes, scores, pairs, im_idx, attention, spatial, contacting,
                            num_frames, mode, attention_logits)


def prediction_batch(videos: Sequence[PackedPrediction]) -> PredictionBatch:
    """Several videos' predictions as one, frames and box rows numbered consecutively (like ``gt_batch``).

    Object scores must share a dtype (the 'no' constraint multiplies them in their own precision).
    """
    num_frames = np.array([v.num_frames for v in videos], dtype=np.int64)
    frame_offset = np.cumsum(num_frames) - num_frames
    num_boxes = np.array([v.boxes.shape[0] for v in videos], dtype=np.int64)
    num_pairs = np.array([v.pairs.shape[0] for v in videos], dtype=np.int64)
    video_of_pair = np.repeat(np.arange(len(videos)), num_pairs)
    im_idx = np.concatenate([v.im_idx for v in videos])
    in_video = (im_idx >= 0) & (im_idx < num_frames[video_of_pair]) & (im_idx == np.floor(im_idx))
    boxes = np.concatenate([v.boxes for v in videos])
    return PredictionBatch(
        boxes=boxes[:, 1:].astype(np.float64),
        classes=np.concatenate([v.classes for v in videos]).astype(np.int64),
        object_scores=np.concatenate([v.object_scores for v in videos]),
        pairs=np.concatenate([v.pairs for v in videos]).astype(np.int64)
        + (np.cumsum(num_boxes) - num_boxes)[video_of_pair][:, None],
        pair_frame=np.where(in_video, np.where(in_video, im_idx, 0).astype(np.int64) + frame_offset[video_of_pair], -1),
        scores=np.concatenate([np.concatenate([v.attention for v in videos]),
                               np.concatenate([v.spatial for v in videos]),
                               np.concatenate([v.contacting for v in videos])], axis=1, dtype=np.float64),
        num_frames=int(num_frames.sum()),
    )
