"""From per-pair relation scores to the predicted triplets of each constraint (docs/ag_and_eval.md 3.2-3.3).

The reference gives every (subject, object) pair of a frame three score rows of 26 columns: an
attention row (human -> object, columns 0..2), a spatial row (object -> human, the pair reversed,
columns 3..8) and a contacting row (human -> object, columns 9..25), zero outside the row's block.
Inside a frame the rows are ordered: every attention row, then every spatial row, then every
contacting row, each in the stored pair order. That order decides ties, so each prediction carries
``emission``, a key that grows with the reference's order inside the frame.

Here the zero columns are materialised only where they can change a result (frames with few positive
cells under the 'no' constraint): each block is otherwise handled as a ``[P, width]`` slice, and the
reference's 26-column semantics (arg-max over the whole row, zero cells in the 'no' top-100) are
reproduced exactly. All frames of a batch are processed at once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .classes import CONTACTING_OFFSET, NUM_ATTENTION, NUM_PREDICATES, PREDICATE_GROUP, SPATIAL_OFFSET
from .inputs import PredictionBatch
from .matching import positions_in_groups

CONSTRAINTS = ("with", "semi", "no")
SEMI_ROW_TYPES = ("scores", "block")
BLOCK_OFFSETS = (0, SPATIAL_OFFSET, CONTACTING_OFFSET)
_GROUP = np.asarray(PREDICATE_GROUP, dtype=np.int64)      # block of each of the 26 columns
_WIDTHS = (NUM_ATTENTION, CONTACTING_OFFSET - SPATIAL_OFFSET, NUM_PREDICATES - CONTACTING_OFFSET)


@dataclasses.dataclass(frozen=True)
class ScoreBlocks:
    """The pairs of a batch that belong to a frame, in (frame, stored) order, with their three blocks.

    Attributes:
        frame: ``[P]`` int64.
        human, thing: ``[P]`` int64 subject and object row of the stored pair.
        row_base, frame_pairs: ``[P]`` int64; the pair's reference row in block b is
            ``row_base + b * frame_pairs`` (rows numbered consecutively over the batch).
        scores: ``[P, 26]`` float64 attention | spatial | contacting scores of each pair (no zeros).
    """

    frame: np.ndarray
    human: np.ndarray
    thing: np.ndarray
    row_base: np.ndarray
    frame_pairs: np.ndarray
    scores: np.ndarray

    @property
    def values(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``([P,3], [P,6], [P,17])`` views of ``scores``: the attention, spatial and contacting blocks."""
        return (self.scores[:, :SPATIAL_OFFSET], self.scores[:, SPATIAL_OFFSET:CONTACTING_OFFSET],
                self.scores[:, CONTACTING_OFFSET:])

    def row(self, block: int) -> np.ndarray:
        """``[P]`` reference row index of every pair's row in ``block`` (0, 1, 2)."""
        return self.row_base + block * self.frame_pairs

    def subject_object(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Subject and object rows of the block's triplets: spatial triplets are object -> human."""
        return (self.thing, self.human) if block == 1 else (self.human, self.thing)


@dataclasses.dataclass(frozen=True)
class PredictedTriplets:
    """Predicted triplets of a batch (any order).

    Attributes:
        frame: ``[M]`` int64.
        pair, block: ``[M]`` int64 score row it comes from: ``ScoreBlocks`` pair and block (0 attention
            human -> object, 1 spatial object -> human, 2 contacting human -> object).
        predicate: ``[M]`` int64 global predicate.
        predicate_score: ``[M]`` float64.
        emission: ``[M]`` int64, increasing with the reference's emission order inside a frame.
    """

    frame: np.ndarray
    pair: np.ndarray
    block: np.ndarray
    predicate: np.ndarray
    predicate_score: np.ndarray
    emission: np.ndarray

    def subject_object(self, blocks: ScoreBlocks, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Subject and object rows (of the predicted boxes) of the triplets ``index``."""
        pair, spatial = self.pair[index], self.block[index] == 1
        human, thing = blocks.human[pair], blocks.thing[pair]
        return np.where(spatial, thing, human), np.where(spatial, human, thing)


def score_blocks(pred: PredictionBatch) -> ScoreBlocks:
    """Orders the pairs that belong to a frame by frame (stable) and numbers their reference rows."""
    valid = np.flatnonzero(pred.pair_frame >= 0)
    pair = valid[np.argsort(pred.pair_frame[valid], kind="stable")]
    frame = pred.pair_frame[pair]
    pairs_per_frame = np.bincount(frame, minlength=pred.num_frames)
    pairs_before = np.cumsum(pairs_per_frame) - pairs_per_frame
    return ScoreBlocks(frame=frame, human=pred.pairs[pair, 0], thing=pred.pairs[pair, 1],
                       row_base=3 * pairs_before[frame] + positions_in_groups(frame),
                       frame_pairs=pairs_per_frame[frame], scores=pred.scores[pair])


def _triplets(parts: list[tuple[np.ndarray, ...]]) -> PredictedTriplets:
    """Concatenates (frame, pair, block, predicate, score, emission) tuples."""
    frame, pair, block, predicate, score, emission = (np.concatenate(c) for c in zip(*parts))
    return PredictedTriplets(frame=frame, pair=pair, block=block, predicate=predicate.astype(np.int64),
                             predicate_score=score.astype(np.float64), emission=emission)


def _row_argmax(values: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max column and max of the reference's 26-column row (zeros outside the block).

    Where the block maximum is positive it is the row's; otherwise the row's first maximum is a zero:
    column 0 (before the block), or for the attention block its own first zero or column 3.
    """
    local = values.argmax(axis=1)
    best = np.take_along_axis(values, local[:, None], axis=1)[:, 0]
    column = local + offset
    if (best <= 0).any():
        first_zero_after = NUM_ATTENTION if offset == 0 else 0
        column = np.where(best < 0, first_zero_after, column)
        column = np.where((best == 0) & (offset > 0), 0, column)
        best = np.maximum(best, 0.0)
    return column, best


def with_constraint(blocks: ScoreBlocks) -> PredictedTriplets:
    """One triplet per row: the arg-max predicate over all 26 columns (first maximum on ties)."""
    parts = []
    for b, offset in enumerate(BLOCK_OFFSETS):
        column, score = _row_argmax(blocks.values[b], offset)
        parts.append((blocks.frame, np.arange(column.shape[0]), np.full(column.shape[0], b), column, score,
                      blocks.row(b) * NUM_PREDICATES + column))
    return _triplets(parts)


def semi_constraint(blocks: ScoreBlocks, threshold: float, row_type: str = "scores") -> PredictedTriplets:
    """Attention rows give their arg-max predicate; spatial and contacting rows every column ``> threshold``.

    Args:
        blocks: the batch's score blocks.
        threshold: strict lower bound on spatial/contacting probabilities (0.9 in test.py); must be
            ``>= 0`` so that, as in the reference, zero cells never pass it.
        row_type: ``'scores'`` (reference): a row counts only if the sum of its block's first two
            scores is positive (the reference infers the row kind from ``S[0]+S[1]``, ``S[3]+S[4]``,
            ``S[9]+S[10]``, so e.g. an attention row with two zero leading probabilities emits nothing,
            Q-E3); ``'block'``: every row counts.
    """
    if row_type not in SEMI_ROW_TYPES:
        raise ValueError(f"semi_row_type: expected one of {SEMI_ROW_TYPES}, got {row_type!r}")
    if not threshold >= 0:
        raise ValueError(f"semi_threshold: expected a number >= 0, got {threshold!r}")
    parts = []
    for b, offset in enumerate(BLOCK_OFFSETS):
        values = blocks.values[b]
        counts = values[:, 0] + values[:, 1] > 0 if row_type == "scores" else np.ones(values.shape[0], bool)
        if b == 0:
            pair = np.flatnonzero(counts)
            if row_type == "scores":    # counted rows have a positive maximum: the block's arg-max
                column, score = _row_argmax(values[pair], offset)
            else:
                column = values[pair].argmax(axis=1)
                score = np.take_along_axis(values[pair], column[:, None], axis=1)[:, 0]
        else:
            pair, local = np.nonzero((values > threshold) & counts[:, None])
            column, score = local + offset, values[pair, local]
        parts.append((blocks.frame[pair], pair, np.full(pair.shape[0], b), column, score,
                      blocks.row(b)[pair] * NUM_PREDICATES + column))
    return _triplets(parts)


def no_constraint(blocks: ScoreBlocks, object_scores: np.ndarray, top: int = 100) -> PredictedTriplets:
    """The ``top`` (row, predicate) cells of each frame by object_score x object_score x predicate score.

    The two object scores are multiplied in their own precision (float32 for model outputs) before the
    float64 product with the predicate score, as in the reference. Cells are taken in descending order;
    ties keep the earlier cell in the reference's row-major order (a stable ``argsort(-x)``).

    Frames are processed in groups with the same number of pairs, each group as one dense
    ``[frames, cells]`` matrix sorted row by row. A frame with at least ``top`` positive cells can only
    keep positive cells, so only its block cells (26 per pair) are ranked; a frame with fewer ranks all
    of its ``78 * pairs`` cells, the zero columns outside the blocks included, exactly as the reference.

    Args:
        blocks: the batch's score blocks.
        object_scores: ``[N]`` scores of the predicted boxes.
        top: cells kept per frame.
    """
    pair_score = object_scores[blocks.human] * object_scores[blocks.thing]
    overall = pair_score[:, None] * blocks.scores                  # [P, 26]
    num_frames = int(blocks.frame.max(initial=-1)) + 1
    pairs_per_frame = np.bincount(blocks.frame, minlength=num_frames)
    first_pair = np.cumsum(pairs_per_frame) - pairs_per_frame
    positives = np.bincount(blocks.frame, weights=(overall > 0).sum(axis=1), minlength=num_frames)
    present = np.flatnonzero(pairs_per_frame)
    group = 2 * pairs_per_frame[present] + (positives[present] < top)
    frames, codes = [], []
    for key in np.unique(group):
        frame = present[group == key]
        pair_count, dense = divmod(int(key), 2)
        pair = first_pair[frame][:, None] + np.arange(pair_count)[None, :]        # [F, pairs]
        cells, layout = _frame_cells(overall[pair], bool(dense))
        kept = min(top, cells.shape[1])
        column = (_dense_order(cells) if dense else _descending(-cells, kept))[:, :kept]
        cell_block, cell_pair, cell_column = (part[column] for part in layout)
        cell_pair = pair[np.arange(frame.shape[0])[:, None], cell_pair]
        frames.append(np.repeat(frame, kept))
        codes.append(((cell_pair << 7) | (cell_block << 5) | cell_column).ravel())
    frame = np.concatenate(frames) if frames else np.zeros(0, dtype=np.int64)
    code = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
    by_frame = np.argsort(frame.astype(np.uint16) if num_frames <= 2 ** 16 else frame, kind="stable")
    return _decode_cells(blocks, frame[by_frame], code[by_frame])


def _descending(keys: np.ndarray, kept: int) -> np.ndarray:
    """Row-wise ``argsort`` of ``[F, W]`` keys, stable (earlier column first on ties of finite keys) in the
    first ``kept`` positions: the fast unstable sort is redone stably only for rows with such ties."""
    order = np.argsort(keys, axis=1)
    ranked = np.take_along_axis(keys, order[:, :kept + 1], axis=1)
    tied = ((ranked[:, 1:] == ranked[:, :-1]) & np.isfinite(ranked[:, 1:])).any(axis=1)
    if tied.any():
        order[tied] = np.argsort(keys[tied], axis=1, kind="stable")
    return order


def _dense_order(cells: np.ndarray) -> np.ndarray:
    """Row-wise order of ``[F, W]`` cells: positive cells by descending value, then zero cells, then
    negative cells by descending value; ties (zeros above all) in column order.

    Equals a stable ``argsort(-cells, axis=1)`` without sorting the many zero cells of a dense row.
    """
    num, width = cells.shape
    positive, negative = cells > 0, cells < 0
    zero = ~positive & ~negative
    position = np.broadcast_to(np.arange(width), cells.shape)
    rank = np.empty(cells.shape, dtype=np.int64)
    np.put_along_axis(rank, _descending(np.where(positive, -cells, np.inf), width), position, axis=1)
    before = positive.sum(axis=1, keepdims=True)
    rank = np.where(zero, before + np.cumsum(zero, axis=1) - 1, rank)
    if negative.any():
        negative_rank = np.empty(cells.shape, dtype=np.int64)
        np.put_along_axis(negative_rank, _descending(np.where(negative, -cells, np.inf), width), position, axis=1)
        rank = np.where(negative, before + zero.sum(axis=1, keepdims=True) + negative_rank, rank)
    order = np.empty(cells.shape, dtype=np.int64)
    np.put_along_axis(order, rank, position, axis=1)
    return order


def _frame_cells(values: np.ndarray, dense: bool) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """One row of cells per frame, in the reference's row-major order, and what each column holds.

    Args:
        values: ``[F, pairs, 26]`` float64 cell values of the frames' pairs.
        dense: include the zero columns outside each block (every frame row then has 78 cells per pair).
    Returns:
        ``[F, W]`` cells and, for the W columns, (block, pair position in the frame, predicate column).
    """
    num, pairs = values.shape[:2]
    if dense:
        cells = np.zeros((num, 3, pairs, NUM_PREDICATES))
        for b, offset in enumerate(BLOCK_OFFSETS):
            width = _WIDTHS[b]
            cells[:, b, :, offset:offset + width] = values[:, :, offset:offset + width]
        index = np.arange(3 * pairs * NUM_PREDICATES)
        layout = (index // (pairs * NUM_PREDICATES), (index // NUM_PREDICATES) % pairs, index % NUM_PREDICATES)
        return cells.reshape(num, -1), layout
    parts, layout_parts = [], []
    for b, offset in enumerate(BLOCK_OFFSETS):
        width = _WIDTHS[b]
        parts.append(values[:, :, offset:offset + width].reshape(num, pairs * width))
        index = np.arange(pairs * width)
        layout_parts.append((np.full(pairs * width, b), index // width, offset + index % width))
    return np.concatenate(parts, axis=1), tuple(np.concatenate(p) for p in zip(*layout_parts))


def _decode_cells(blocks: ScoreBlocks, frame: np.ndarray, code: np.ndarray) -> PredictedTriplets:
    """Triplets of the kept cells (``code = pair << 7 | block << 5 | column``), emitted in the given order."""
    pair, block, column = code >> 7, (code >> 5) & 3, code & 31
    score = blocks.scores.ravel()[pair * NUM_PREDICATES + column]
    outside = _GROUP[column] != block                   # zero cells outside the row's block
    if outside.any():
        score[outside] = 0.0
    return PredictedTriplets(frame=frame, pair=pair, block=block, predicate=column, predicate_score=score,
                             emission=np.arange(code.shape[0], dtype=np.int64))


def predict_triplets(blocks: ScoreBlocks, object_scores: np.ndarray, constraint: str, semi_threshold: float = 0.9,
                     semi_row_type: str = "scores", no_top: int = 100) -> PredictedTriplets:
    """Predicted triplets of a batch under ``constraint`` ('with', 'semi' or 'no')."""
    if constraint == "with":
        return with_constraint(blocks)
    if constraint == "semi":
        return semi_constraint(blocks, semi_threshold, semi_row_type)
    if constraint == "no":
        return no_constraint(blocks, object_scores, no_top)
    raise ValueError(f"constraint: expected one of {CONSTRAINTS}, got {constraint!r}")


def ranking_score(triplets: PredictedTriplets, blocks: ScoreBlocks, object_scores: np.ndarray) -> np.ndarray:
    """``(subject score * object score) * predicate score`` in float64, the reference's ranking key; ``[M]``."""
    scores = object_scores.astype(np.float64)
    pair_score = scores[blocks.human] * scores[blocks.thing]      # same product in either order
    return pair_score[triplets.pair] * triplets.predicate_score
