"""Vectorised building blocks of the evaluator: "+1" box IoU, ranking inside frames, triplet matching.

Everything works on whole videos at once: predictions and GT triplets carry a frame id and every
operation is grouped by it, so there is no Python loop over frames or triplets.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NO_MATCH = np.iinfo(np.int64).max   # first-match rank of a GT triplet that no prediction matches


def box_iou_plus1(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[n, m]`` float64 of xyxy ``boxes_a [n, 4]`` and ``boxes_b [m, 4]`` (any real
    dtype) with the "+1" pixel convention of the reference's Cython ``bbox_overlaps``:
    ``area = (x2-x1+1)(y2-y1+1)``, intersection sides get ``+1`` and count only when positive; the
    float64 operations are those of the reference, so values are bit-identical.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(1, -1, 4)
    return _iou_plus1(a, b)


def paired_iou_plus1(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Row-by-row IoU (``boxes_a[i]`` vs ``boxes_b[i]``), "+1" convention; ``[n, 4]`` x2 -> ``[n]`` float64."""
    return _iou_plus1(np.asarray(boxes_a, dtype=np.float64), np.asarray(boxes_b, dtype=np.float64))


def _iou_plus1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Same operation order as the reference: union = (area_a + area_b) - inter, iou = inter / union,
    # with ``a`` playing the reference's ``boxes`` (GT) and ``b`` its ``query_boxes`` (predictions).
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
    overlapping = (iw > 0) & (ih > 0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(overlapping, iou, 0.0)


def positions_in_groups(sorted_groups: np.ndarray) -> np.ndarray:
    """Position ``[n]`` int64 of every element of ``sorted_groups`` (``[n]`` integers, equal values
    contiguous, e.g. sorted frames) inside its run of equal values: 0 for the first, 1 for the next, ..."""
    n = sorted_groups.shape[0]
    index = np.arange(n, dtype=np.int64)
    if n == 0:
        return index
    run_start = np.empty(n, dtype=bool)
    run_start[0] = True
    np.not_equal(sorted_groups[1:], sorted_groups[:-1], out=run_start[1:])
    return index - np.maximum.accumulate(np.where(run_start, index, 0))


def order_in_frames(frame: np.ndarray, value: np.ndarray, tie_key: np.ndarray, ties: str) -> np.ndarray:
    """Permutation that sorts by frame (ascending), then value (descending), then ``tie_key``.

    Same result as a stable ``np.lexsort`` but several times faster: numpy's fast unstable sort orders
    the values, a stable (radix) sort groups the frames, and only runs of equal (frame, value) are
    re-sorted by ``tie_key``. Input that is already in order is recognised in linear time.

    Args:
        frame: ``[n]`` int64, non-negative.
        value: ``[n]`` float64, no NaN.
        tie_key: ``[n]`` int64, distinct within a frame.
        ties: ``'later'``: among equal values the larger ``tie_key`` comes first (the reference's
            ``argsort(x)[::-1]`` with a stable sort, ``tie_key`` = emission order); ``'earlier'``: the
            smaller first (a stable ``argsort(-x)``).
    Returns ``[n]`` int64 indices.
    """
    n = frame.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    same_frame = frame[1:] == frame[:-1]
    if (frame[1:] >= frame[:-1]).all() and (tie_key[1:] > tie_key[:-1]).all() \
            and not (same_frame & (value[1:] > value[:-1])).any():
        order = np.arange(n, dtype=np.int64)
    else:
        order = np.argsort(-value)
        frame_key = frame[order]
        if int(frame_key.max()) < 2 ** 16:
            frame_key = frame_key.astype(np.uint16)   # numpy's stable sort is a radix sort for 16-bit ints
        order = order[np.argsort(frame_key, kind="stable")]
    return _sort_tied_runs(order, frame, value, tie_key, ties)


def _sort_tied_runs(order: np.ndarray, frame: np.ndarray, value: np.ndarray, tie_key: np.ndarray,
                    ties: str) -> np.ndarray:
    """Reorders each run of equal (frame, value) in ``order`` by ``tie_key`` (ascending or descending)."""
    sorted_frame, sorted_value = frame[order], value[order]
    tied = (sorted_frame[1:] == sorted_frame[:-1]) & (sorted_value[1:] == sorted_value[:-1])
    if not tied.any():
        return order
    n = order.shape[0]
    if not (tied & (tie_key[order[1:]] < tie_key[order[:-1]])).any():
        # Every run is already ascending in tie_key (input that came in order): keep or reverse runs.
        return order if ties == "earlier" else order[_reversed_runs(tied)]
    in_run = np.zeros(n, dtype=bool)
    in_run[1:] |= tied
    in_run[:-1] |= tied
    where = np.flatnonzero(in_run)
    run = np.cumsum(np.concatenate([[True], ~tied]))[where]
    members = order[where]
    key = tie_key[members]
    key = key - key.min() if ties == "earlier" else key.max() - key
    order[where] = members[np.lexsort((key, run))]
    return order


def _reversed_runs(tied: np.ndarray) -> np.ndarray:
    """Permutation of ``n = len(tied) + 1`` positions reversing each run (``tied[i]``: i and i+1 share one)."""
    n = tied.shape[0] + 1
    index = np.arange(n)
    start = np.maximum.accumulate(np.where(np.concatenate([[True], ~tied]), index, 0))
    end = n - 1 - np.maximum.accumulate(np.where(np.concatenate([[True], ~tied[::-1]]), index, 0))[::-1]
    return start + end - index


def rank_in_frames(frame: np.ndarray, score: np.ndarray, emission: np.ndarray) -> np.ndarray:
    """Rank of each prediction inside its frame, by descending score.

    Mirrors the reference's ``argsort(score)[::-1]`` with a *stable* argsort: ties go to the prediction
    emitted later first (numpy's default sort is only guaranteed stable below 17 elements; the
    reference's tie order on larger frames is platform-dependent, ours is this fixed rule).

    Args:
        frame: ``[m]`` int64 frame id of each prediction.
        score: ``[m]`` float64 ranking score.
        emission: ``[m]`` int64 position in the reference's order of predictions inside the frame.
    Returns:
        ``[m]`` int64 rank (0 = best) within the prediction's frame.
    """
    order = order_in_frames(frame, score, emission, ties="later")
    rank = np.empty(frame.shape[0], dtype=np.int64)
    rank[order] = positions_in_groups(frame[order])
    return rank


def triplet_keys(frame: np.ndarray, subject_class: np.ndarray, predicate: np.ndarray,
                 object_class: np.ndarray, num_classes: int, num_predicates: int) -> np.ndarray:
    """One int64 key per (frame, subject class, predicate, object class); classes in ``[0, num_classes)``."""
    key = frame.astype(np.int64) * num_classes + subject_class
    key = key * num_predicates + predicate
    return key * num_classes + object_class


def predicate_masks(keys: np.ndarray, predicates: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each query key, the bit mask of the predicates carried by the items with that key.

    Args:
        keys: ``[G]`` int64 item keys (e.g. frame and the two labels of each GT triplet).
        predicates: ``[G]`` int64 predicate of each item, below 63.
        queries: ``[Q]`` int64 keys to look up.
    Returns:
        ``[Q]`` int64, bit p set iff an item with the query's key has predicate p (0 for unknown keys).
    """
    if keys.shape[0] == 0:
        return np.zeros(queries.shape[0], dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    first = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    masks = np.bitwise_or.reduceat(np.left_shift(1, predicates[order]), first)
    distinct = sorted_keys[first]
    slot = np.minimum(np.searchsorted(distinct, queries), distinct.shape[0] - 1)
    return np.where(distinct[slot] == queries, masks[slot], 0)


@dataclasses.dataclass(frozen=True)
class KeyIndex:
    """GT triplet keys prepared for lookup: each distinct key and the GT triplets that carry it.

    Attributes:
        order: ``[G]`` int64 GT indices sorted by key.
        distinct: ``[D]`` int64 sorted distinct keys.
        first: ``[D]`` int64 position in ``order`` of each distinct key's first GT.
        count: ``[D]`` int64 number of GT triplets with that key.
    """

    order: np.ndarray
    distinct: np.ndarray
    first: np.ndarray
    count: np.ndarray

    @classmethod
    def build(cls, keys: np.ndarray) -> "KeyIndex":
        """Index of ``[G]`` int64 keys."""
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        first = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]])[:keys.shape[0]])
        return cls(order=order, distinct=sorted_keys[first], first=first,
                   count=np.diff(np.append(first, keys.shape[0])))


def first_match_rank(gt_index: KeyIndex, gt_boxes: np.ndarray, gt_subject: np.ndarray, gt_object: np.ndarray,
                     pred_keys: np.ndarray, pred_rank: np.ndarray, pred_boxes: np.ndarray,
                     pred_subject: np.ndarray, pred_object: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Best (lowest) rank of a prediction that matches each GT triplet.

    A prediction matches a GT triplet when their keys (frame and the three labels) are equal and both
    the subject and the object IoU are ``>= iou_threshold``. Matching is many-to-many, as in the
    reference: GT ``g`` is recalled at K iff ``result[g] < K``.

    Args:
        gt_index: ``KeyIndex`` of the ``[G]`` GT keys (see ``triplet_keys``).
        gt_boxes: ``[B, 4]`` float64 xyxy GT box table; gt_subject, gt_object: ``[G]`` rows of it.
        pred_keys: ``[M]`` int64.
        pred_rank: ``[M]`` int64 rank of each prediction inside its frame.
        pred_boxes: ``[N, 4]`` float64 predicted box table; pred_subject, pred_object: ``[M]`` rows of it.
        iou_threshold: minimum IoU of both boxes.
    Returns:
        ``[G]`` int64; ``NO_MATCH`` where nothing matches.
    """
    best = np.full(gt_index.order.shape[0], NO_MATCH, dtype=np.int64)
    if gt_index.distinct.shape[0] == 0 or pred_keys.shape[0] == 0:
        return best
    slot = np.minimum(np.searchsorted(gt_index.distinct, pred_keys), gt_index.distinct.shape[0] - 1)
    found = np.flatnonzero(gt_index.distinct[slot] == pred_keys)
    if found.shape[0] == 0:
        return best
    slot = slot[found]
    counts = gt_index.count[slot]
    if (counts == 1).all():         # the usual case: distinct GT keys, one candidate per prediction
        pred_of_candidate, gt_of_candidate = found, gt_index.order[gt_index.first[slot]]
    else:
        total = int(counts.sum())
        pred_of_candidate = np.repeat(found, counts)
        run_offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        gt_of_candidate = gt_index.order[np.repeat(gt_index.first[slot], counts) + run_offset]
    ok = paired_iou_plus1(gt_boxes[gt_subject[gt_of_candidate]],
                          pred_boxes[pred_subject[pred_of_candidate]]) >= iou_threshold
    ok &= paired_iou_plus1(gt_boxes[gt_object[gt_of_candidate]],
                           pred_boxes[pred_object[pred_of_candidate]]) >= iou_threshold
    np.minimum.at(best, gt_of_candidate[ok], pred_rank[pred_of_candidate[ok]])
    return best
