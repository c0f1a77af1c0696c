"""Tests of fremure.eval: the golden vectors of docs/ag_and_eval.md 3.6 and 3.10, exact agreement with
an independent loop implementation on adversarial random data, and the edge cases of
docs/ag_and_eval.md 3.7 and section 5."""

from __future__ import annotations

import importlib.util
import pathlib
import zlib

import numpy as np
import pytest
import torch

from fremure.eval import (KS, PREDICATES, MultiConstraintEvaluator, SceneGraphEvaluator, box_iou_plus1, pack_gt,
                          pack_prediction, paired_iou_plus1)
from fremure.eval.matching import order_in_frames, rank_in_frames

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load_baseline():
    spec = importlib.util.spec_from_file_location("baseline_eval_loop", BENCHMARKS / "baseline_eval_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LoopEvaluator = _load_baseline().LoopEvaluator


# ------------------------------------------------------------------------------- input builders


def gt_object(cls, box, att, spa, con):
    """One object dict in the loader's format (docs/ag_and_eval.md 1.8)."""
    return {"class": cls, "bbox": np.array(box, dtype=np.float64),
            "attention_relationship": torch.LongTensor(att), "spatial_relationship": torch.LongTensor(spa),
            "contacting_relationship": torch.LongTensor(con), "metadata": {"tag": "t", "set": "test"},
            "visible": True}


def gt_person(box, frame="VID.mp4/000001.png"):
    return {"person_bbox": np.array([box], dtype=np.float32), "frame": frame}


def entry(boxes, labels, pair_idx, im_idx, attention, spatial, contacting, scores=None, mode="predcls"):
    """A model ``entry`` dict (docs/ag_and_eval.md 2.6) with torch tensors."""
    label_key, score_key = ("labels", "scores") if mode == "predcls" else ("pred_labels", "pred_scores")
    scores = np.ones(len(labels)) if scores is None else scores
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), label_key: torch.tensor(labels),
            score_key: torch.tensor(scores, dtype=torch.float32),
            "pair_idx": torch.tensor(pair_idx, dtype=torch.int64).reshape(-1, 2),
            "im_idx": torch.tensor(im_idx, dtype=torch.float32),
            "attention_distribution": torch.tensor(attention, dtype=torch.float32).reshape(-1, 3),
            "spatial_distribution": torch.tensor(spatial, dtype=torch.float32).reshape(-1, 6),
            "contacting_distribution": torch.tensor(contacting, dtype=torch.float32).reshape(-1, 17)}


def example1_gt():
    return [[gt_person([10, 10, 100, 200]),
             gt_object(5, [50, 60, 80, 90], [0], [2], [5, 12]),
             gt_object(8, [0, 100, 120, 240], [1], [1, 3], [10])],
            [gt_person([12, 12, 102, 202]),
             gt_object(5, [52, 60, 82, 92], [2], [2], [8])]]


def example1_contacting():
    con = np.zeros((3, 17), dtype=np.float32)
    for row, cells in enumerate([{0: .1, 5: .97, 6: .1, 8: .2, 12: .5}, {5: .1, 6: .3, 8: .05, 10: .93, 12: .2},
                                 {5: .2, 8: .6, 12: .7}]):
        for column, value in cells.items():
            con[row, column] = value
    return con + np.float32(0.01)


def example1_pred(mode="predcls"):
    pred = entry(boxes=[[0, 10, 10, 100, 200], [0, 50, 60, 80, 90], [0, 0, 100, 120, 240], [1, 12, 12, 102, 202],
                        [1, 52, 60, 82, 92]],
                 labels=[1, 5, 8, 1, 5], pair_idx=[[0, 1], [0, 2], [3, 4]], im_idx=[0, 0, 1],
                 attention=[[.7, .2, .1], [.3, .6, .1], [.2, .3, .5]],
                 spatial=[[.1, .2, .95, .3, .05, .1], [.2, .92, .1, .4, .3, .1], [.05, .1, .8, .2, .1, .05]],
                 contacting=example1_contacting())
    if mode == "sgdet":
        pred["boxes"] = torch.tensor([[0, 12, 14, 104, 205], [0, 52, 62, 83, 94], [0, 30, 150, 160, 300],
                                      [1, 12, 12, 102, 202], [1, 52, 60, 82, 92]], dtype=torch.float32)
        pred["pred_labels"] = pred.pop("labels")
        pred.pop("scores")
        pred["pred_scores"] = torch.tensor([0.9, 0.8, 0.5, 0.95, 0.6])
    return pred


def example2():
    attention = [[0.268, 0.422, 0.31], [0.331, 0.232, 0.437], [0.094, 0.364, 0.542], [0.172, 0.559, 0.268],
                 [0.239, 0.74, 0.021], [0.048, 0.011, 0.941]]
    spatial = [[0.778, 0.87, 0.979, 0.799, 0.461, 0.781], [0.118, 0.64, 0.143, 0.945, 0.522, 0.415],
               [0.265, 0.774, 0.456, 0.568, 0.019, 0.618], [0.612, 0.617, 0.944, 0.682, 0.36, 0.437],
               [0.698, 0.06, 0.667, 0.671, 0.21, 0.129], [0.315, 0.364, 0.57, 0.439, 0.988, 0.102]]
    contacting = [
        [0.209, 0.161, 0.653, 0.253, 0.466, 0.244, 0.159, 0.11, 0.656, 0.138, 0.197, 0.369, 0.821, 0.097, 0.838,
         0.096, 0.976],
        [0.469, 0.977, 0.605, 0.739, 0.039, 0.283, 0.12, 0.296, 0.119, 0.318, 0.414, 0.064, 0.692, 0.567, 0.265,
         0.523, 0.094],
        [0.576, 0.929, 0.319, 0.667, 0.132, 0.716, 0.289, 0.183, 0.587, 0.02, 0.829, 0.005, 0.678, 0.27, 0.735,
         0.962, 0.249],
        [0.576, 0.592, 0.572, 0.223, 0.953, 0.447, 0.846, 0.699, 0.297, 0.814, 0.397, 0.881, 0.581, 0.882, 0.693,
         0.725, 0.501],
        [0.956, 0.644, 0.424, 0.606, 0.019, 0.302, 0.66, 0.29, 0.618, 0.429, 0.135, 0.298, 0.57, 0.591, 0.574,
         0.653, 0.652],
        [0.431, 0.897, 0.368, 0.436, 0.892, 0.806, 0.704, 0.1, 0.919, 0.714, 0.999, 0.149, 0.868, 0.162, 0.616,
         0.124, 0.848]]
    frame = [gt_person([0, 0, 200, 400])]
    boxes = [[0, 0, 0, 200, 400]]
    for i in range(6):
        box = [20 * i, 30 * i, 20 * i + 50, 30 * i + 60]
        frame.append(gt_object(2 + i, box, [i % 3], [i % 6], [(2 * i) % 17, (2 * i + 1) % 17]))
        boxes.append([0, *box])
    pred = entry(boxes, [1] + [2 + i for i in range(6)], [[0, i + 1] for i in range(6)], [0] * 6,
                 attention, spatial, contacting)
    return [frame], pred


def evaluate(mode, constraint, gt, pred, **options):
    evaluator = SceneGraphEvaluator(mode, constraint, semi_threshold=0.9, **options)
    evaluator.add_video(gt, pred)
    return evaluator


# ------------------------------------------------------------------------- golden vectors (3.10)

EXAMPLE1_PREDCLS = {"with": ([0.75, 0.666667], 0.708333, 0.269231),
                    "semi": ([0.75, 0.333333], 0.541667, 0.25),
                    "no": ([1.0, 1.0], 1.0, 0.384615)}


@pytest.mark.parametrize("constraint", ["with", "semi", "no"])
def test_golden_example1_predcls(constraint):
    frames, recall, mean_recall = EXAMPLE1_PREDCLS[constraint]
    evaluator = evaluate("predcls", constraint, example1_gt(), example1_pred())
    summary = evaluator.summary()
    for k in KS:         # identical for every K
        np.testing.assert_allclose(evaluator.frame_recalls[k], frames, atol=5e-7)
        assert summary["R"][k] == pytest.approx(recall, abs=5e-7)
        assert summary["mR"][k] == pytest.approx(mean_recall, abs=5e-7)


WITH_HITS = [1, 1, 1, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
EXAMPLE1_COUNTS = [1, 1, 1, 0, 1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0]
SEMI_HITS = WITH_HITS[:5] + [1] + WITH_HITS[6:]


@pytest.mark.parametrize("constraint, hits", [("with", WITH_HITS), ("semi", SEMI_HITS), ("no", EXAMPLE1_COUNTS)])
def test_golden_example1_hit_and_count_vectors(constraint, hits):
    evaluator = evaluate("predcls", constraint, example1_gt(), example1_pred())
    assert evaluator.hits[20].tolist() == hits
    assert evaluator.counts[20].tolist() == EXAMPLE1_COUNTS
    expected = np.array(hits) / (np.array(EXAMPLE1_COUNTS) + 1e-10)
    np.testing.assert_array_equal(evaluator.summary()["per_predicate"][20], expected)


EXAMPLE1_SGDET = {"with": ([0.375, 0.666667], 0.153846),
                  "semi": ([0.375, 0.333333], 0.134615),
                  "no": ([0.5, 1.0], 0.230769)}


@pytest.mark.parametrize("constraint", ["with", "semi", "no"])
def test_golden_example1_sgdet(constraint):
    frames, mean_recall = EXAMPLE1_SGDET[constraint]
    evaluator = evaluate("sgdet", constraint, example1_gt(), example1_pred("sgdet"))
    for k in KS:
        np.testing.assert_allclose(evaluator.frame_recalls[k], frames, atol=5e-7)
        assert evaluator.summary()["mR"][k] == pytest.approx(mean_recall, abs=5e-7)


EXAMPLE2 = {"with": ([0.041667, 0.166667, 0.166667, 0.166667], [0.038462, 0.096154, 0.096154, 0.096154]),
            "semi": ([0.041667, 0.166667, 0.166667, 0.166667], [0.038462, 0.096154, 0.096154, 0.096154]),
            "no": ([0.041667, 0.083333, 0.375, 0.625], [0.038462, 0.057692, 0.307692, 0.519231])}


@pytest.mark.parametrize("constraint", ["with", "semi", "no"])
def test_golden_example2_top_k_cut(constraint):
    recall, mean_recall = EXAMPLE2[constraint]
    gt, pred = example2()
    summary = evaluate("predcls", constraint, gt, pred).summary()
    np.testing.assert_allclose([summary["R"][k] for k in KS], recall, atol=5e-7)
    np.testing.assert_allclose([summary["mR"][k] for k in KS], mean_recall, atol=5e-7)


@pytest.mark.parametrize("constraint", ["with", "semi", "no"])
def test_sttran_logits_input_gives_the_same_recall(constraint):
    """docs/ag_and_eval.md 3.10: log(probs) fed to an evaluator that softmaxes attention gives the same R@K."""
    pred = example1_pred()
    logits = dict(pred, attention_distribution=torch.log(pred["attention_distribution"]))
    expected = evaluate("predcls", constraint, example1_gt(), pred).summary()["R"]
    assert evaluate("predcls", constraint, example1_gt(), logits, attention_logits=True).summary()["R"] == expected
    assert torch.equal(logits["attention_distribution"], torch.log(pred["attention_distribution"]))  # untouched


# ------------------------------------------------------------------------------------- IoU (3.6)


@pytest.mark.parametrize("pred_box, gt_box, iou", [([12, 14, 104, 205], [10, 10, 100, 200], 0.895074),
                                                   ([52, 62, 83, 94], [50, 60, 80, 90], 0.715136),
                                                   ([30, 150, 160, 300], [0, 100, 120, 240], 0.289941)])
def test_iou_golden_vectors_plus_one_convention(pred_box, gt_box, iou):
    assert box_iou_plus1([gt_box], [pred_box])[0, 0] == pytest.approx(iou, abs=5e-7)
    assert paired_iou_plus1(np.array([gt_box]), np.array([pred_box]))[0] == pytest.approx(iou, abs=5e-7)


def test_iou_matches_the_cython_loop_arithmetic():
    rng = np.random.default_rng(3)
    a = np.sort(rng.integers(0, 60, (40, 4)).reshape(40, 2, 2), axis=1).transpose(0, 2, 1).reshape(40, 4) * 1.5
    b = np.sort(rng.integers(0, 60, (30, 4)).reshape(30, 2, 2), axis=1).transpose(0, 2, 1).reshape(30, 4) * 1.5
    expected = np.zeros((40, 30))
    for n in range(40):
        for k in range(30):
            iw = min(a[n, 2], b[k, 2]) - max(a[n, 0], b[k, 0]) + 1
            ih = min(a[n, 3], b[k, 3]) - max(a[n, 1], b[k, 1]) + 1
            if iw > 0 and ih > 0:
                union = (a[n, 2] - a[n, 0] + 1) * (a[n, 3] - a[n, 1] + 1) + (b[k, 2] - b[k, 0] + 1) * (
                    b[k, 3] - b[k, 1] + 1) - iw * ih
                expected[n, k] = iw * ih / union
    np.testing.assert_array_equal(box_iou_plus1(a, b), expected)
    assert (expected == 0).any() and (expected > 0.5).any()


# --------------------------------------------------- agreement with the loop version on random data


def random_video(rng, mode, num_frames, adversarial):
    """A random video; ``adversarial`` draws from tiny value sets so ties, zeros, duplicates and
    negative scores are frequent (every reference rule about them is exercised)."""
    box_pool = np.array([[10, 10, 60, 80], [12, 12, 62, 84], [100, 40, 180, 150], [0, 0, 200, 260],
                         [105, 45, 175, 160], [300, 20, 360, 90]], dtype=np.float64)
    gt, boxes, labels, pairs, im_idx = [], [], [], [], []
    for f in range(num_frames):
        frame = [gt_person(box_pool[3] + rng.integers(-3, 4, 4) * (not adversarial))]
        for _ in range(int(rng.integers(1, 9))):
            frame.append(gt_object(int(rng.integers(2, 5 if adversarial else 37)), box_pool[rng.integers(0, 6)],
                                   [int(rng.integers(0, 3))],
                                   sorted(rng.choice(6, int(rng.integers(0, 3)), replace=False).tolist()),
                                   sorted(rng.choice(17, int(rng.integers(0, 4)), replace=False).tolist())))
        gt.append(frame)
        human = len(boxes)
        boxes.append([f, *frame[0]["person_bbox"][0]])
        labels.append(1)
        for obj in frame[1:] + [None] * int(rng.integers(0, 3) if mode == "sgdet" else 0):
            if rng.random() < 0.1:        # a missed pair
                continue
            box = box_pool[rng.integers(0, 6)] if obj is None or mode == "sgdet" else obj["bbox"]
            cls = int(rng.integers(2, 5)) if obj is None or (mode != "predcls" and rng.random() < 0.2) else obj["class"]
            pairs.append([human, len(boxes)])
            im_idx.append(f if rng.random() > 0.05 else rng.choice([num_frames + 1, f + 0.5]))
            boxes.append([f, *box])
            labels.append(cls)
    num_pairs = len(pairs)
    if adversarial:
        levels = np.array([-0.2, 0.0, 0.0, 0.25, 0.5, 0.5, 0.91, 0.95, 1.0])

        def draw(width):
            values = levels[rng.integers(0, len(levels), (num_pairs, width))]
            flat = rng.random(num_pairs) < 0.15           # rows without a positive score
            values[flat] = levels[rng.integers(0, 3, (int(flat.sum()), width))]
            return values
        scores = np.array([0.5, 1.0, 0.8])[rng.integers(0, 3, len(boxes))]
    else:
        draw = lambda width: rng.random((num_pairs, width))  # noqa: E731
        scores = rng.uniform(0.05, 1.0, len(boxes))
    pred = entry(boxes, labels, pairs, im_idx, draw(3), draw(6), draw(17),
                 scores=np.ones(len(boxes)) if mode == "predcls" else scores, mode=mode)
    if adversarial and rng.random() < 0.5:
        key = "scores" if mode == "predcls" else "pred_scores"
        pred[key] = pred[key].double()               # float64 object scores take another 'no' path
    return gt, pred


def assert_same_as_loop(evaluator, loop):
    summary, expected = evaluator.summary(), loop.summary()
    for k in KS:
        np.testing.assert_array_equal(evaluator.frame_recalls[k], loop.recalls[k])
        assert evaluator.hits[k].tolist() == loop.hits[k]
        assert evaluator.counts[k].tolist() == loop.counts[k]
        assert summary["R"][k] == expected["R"][k]
        assert summary["mR"][k] == expected["mR"][k]
        assert summary["per_predicate"][k] == expected["per_predicate"][k]


@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet"])
@pytest.mark.parametrize("constraint", ["with", "semi", "no"])
@pytest.mark.parametrize("adversarial", [False, True], ids=["random", "ties-zeros-negatives"])
def test_identical_to_loop_implementation(mode, constraint, adversarial):
    rng = np.random.default_rng(zlib.crc32(f"{mode}-{constraint}-{adversarial}".encode()))
    evaluator = SceneGraphEvaluator(mode, constraint, batch_frames=16)
    loop = LoopEvaluator(mode, constraint)
    for _ in range(12):
        gt, pred = random_video(rng, mode, int(rng.integers(1, 8)), adversarial)
        evaluator.add_video(gt, pred)
        loop.add_video(gt, pred)
    assert_same_as_loop(evaluator, loop)


def test_many_pairs_per_frame_cross_the_top_100_cut():
    rng = np.random.default_rng(11)
    for constraint in ("no", "with"):
        evaluator, loop = SceneGraphEvaluator("sgdet", constraint), LoopEvaluator("sgdet", constraint)
        for _ in range(3):
            gt, pred = random_video(rng, "sgdet", 2, adversarial=False)
            extra = 12                  # add pairs so frames hold far more than 100 cells
            pred["pair_idx"] = torch.cat([pred["pair_idx"], pred["pair_idx"][:1].repeat(extra, 1)])
            pred["im_idx"] = torch.cat([pred["im_idx"], torch.zeros(extra)])
            for key, width in (("attention_distribution", 3), ("spatial_distribution", 6),
                               ("contacting_distribution", 17)):
                pred[key] = torch.cat([pred[key], torch.rand(extra, width)])
            evaluator.add_video(gt, pred)
            loop.add_video(gt, pred)
        assert_same_as_loop(evaluator, loop)


def test_batching_packing_and_multi_evaluator_do_not_change_numbers():
    rng = np.random.default_rng(5)
    videos = [random_video(rng, "sgcls", int(rng.integers(1, 6)), adversarial=True) for _ in range(8)]
    multi = MultiConstraintEvaluator("sgcls", batch_frames=7)
    for gt, pred in videos:
        multi.add_video(gt, pred)
    for constraint in ("with", "semi", "no"):
        one_by_one = SceneGraphEvaluator("sgcls", constraint, batch_frames=1)
        packed = SceneGraphEvaluator("sgcls", constraint)
        for gt, pred in videos:
            one_by_one.add_video(gt, pred)
            packed.add_video(pack_gt(gt), pack_prediction(pred, "sgcls", len(gt)))
        expected = one_by_one.summary()
        assert packed.summary() == expected
        assert multi[constraint].summary() == expected
        assert multi.summary()[constraint] == expected


def test_numpy_and_torch_inputs_agree():
    pred = example1_pred("sgdet")
    as_numpy = {key: value.numpy() for key, value in pred.items()}
    for constraint in ("with", "semi", "no"):
        assert (evaluate("sgdet", constraint, example1_gt(), as_numpy).summary()
                == evaluate("sgdet", constraint, example1_gt(), pred).summary())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_cuda_tensors_are_accepted():
    pred = {key: value.cuda() for key, value in example1_pred().items()}
    assert evaluate("predcls", "with", example1_gt(), pred).summary()["R"][20] == pytest.approx(0.708333, abs=5e-7)


# ------------------------------------------------------------------------------ ranking and ties


def test_ties_rank_the_later_prediction_first():
    frame = np.array([0, 0, 0, 1, 1])
    score = np.array([0.5, 0.9, 0.5, 0.2, 0.2])
    emission = np.arange(5)
    assert rank_in_frames(frame, score, emission).tolist() == [2, 0, 1, 1, 0]


def test_order_in_frames_equals_a_stable_lexsort():
    rng = np.random.default_rng(0)
    frame = np.sort(rng.integers(0, 20, 3000))
    value = rng.integers(0, 6, 3000) / 4.0             # many ties
    tie = rng.permutation(3000)
    earlier = np.lexsort((tie, -value, frame))
    later = np.lexsort((-tie, -value, frame))
    np.testing.assert_array_equal(order_in_frames(frame, value, tie, "earlier"), earlier)
    np.testing.assert_array_equal(order_in_frames(frame, value, tie, "later"), later)
    in_order = earlier           # already sorted input takes a linear-time path
    np.testing.assert_array_equal(in_order[order_in_frames(frame[in_order], value[in_order], np.arange(3000),
                                                           "later")], later)
    shuffled = rng.permutation(3000)
    np.testing.assert_array_equal(shuffled[order_in_frames(frame[shuffled], value[shuffled], tie[shuffled],
                                                           "earlier")], earlier)


# ----------------------------------------------------------------------------- edge cases (3.7)


def test_frame_without_gt_relations_is_rejected_or_skipped():
    gt = example1_gt() + [[gt_person([0, 0, 50, 50])]]          # frame 2: a person and no object
    with pytest.raises(ValueError, match="frame 2 has no object"):
        SceneGraphEvaluator("predcls").add_video(gt, example1_pred())
    skipping = evaluate("predcls", "with", gt, example1_pred(), on_empty_gt="skip")
    reference = evaluate("predcls", "with", example1_gt(), example1_pred())
    assert skipping.summary() == reference.summary()
    assert skipping.num_frames == 2


def test_frame_without_predicted_pairs_scores_zero_but_counts_its_gt():
    pred = example1_pred()
    pred["im_idx"] = torch.tensor([0.0, 0.0, 5.0])      # the frame-1 pair points outside the video
    evaluator = evaluate("predcls", "with", example1_gt(), pred)
    np.testing.assert_allclose(evaluator.frame_recalls[20], [0.75, 0.0])
    assert evaluator.counts[20].tolist() == EXAMPLE1_COUNTS


def test_video_without_any_pair():
    pred = example1_pred()
    pred.update(pair_idx=torch.zeros((0, 2), dtype=torch.int64), im_idx=torch.zeros(0),
                attention_distribution=torch.zeros((0, 3)), spatial_distribution=torch.zeros((0, 6)),
                contacting_distribution=torch.zeros((0, 17)))
    for constraint in ("with", "semi", "no"):
        evaluator = evaluate("predcls", constraint, example1_gt(), pred)
        assert evaluator.frame_recalls[100].tolist() == [0.0, 0.0]
        assert evaluator.summary()["mR"][100] == 0.0
        assert evaluator.counts[100].tolist() == EXAMPLE1_COUNTS


def test_non_integer_im_idx_matches_no_frame():
    pred = example1_pred()
    pred["im_idx"] = torch.tensor([0.0, 0.0, 0.5])
    assert evaluate("predcls", "with", example1_gt(), pred).frame_recalls[10].tolist()[1] == 0.0


def test_semi_row_kind_is_inferred_from_scores_unless_block_is_asked():
    """Q-E3: an attention row whose first two probabilities are 0 emits nothing in the reference."""
    pred = example1_pred()
    pred["attention_distribution"] = torch.tensor([[0.0, 0.0, 1.0], [.3, .6, .1], [0.0, 0.0, 1.0]])
    scores = evaluate("predcls", "semi", example1_gt(), pred)
    block = evaluate("predcls", "semi", example1_gt(), pred, semi_row_type="block")
    assert scores.hits[20][2] == 0          # 'unsure' of frame 1 is never predicted
    assert block.hits[20][2] == 1
    loop = LoopEvaluator("predcls", "semi")
    loop.add_video(example1_gt(), pred)
    assert_same_as_loop(scores, loop)


@pytest.mark.parametrize("row, hit", [([-.1, -.1, 0.0, -.1, -.1, -.1], False), ([-.1] * 6, False),
                                      ([.1, .1, .8, .1, .1, .1], True)])
def test_with_constraint_arg_max_runs_over_the_zero_columns(row, hit):
    """The reference's 26-column arg-max: a spatial row without a positive score predicts column 0."""
    pred = example1_pred()
    pred["spatial_distribution"][2] = torch.tensor(row)
    evaluator = evaluate("predcls", "with", example1_gt(), pred)
    assert evaluator.hits[10][5] == (2 if hit else 1)      # 'in_front_of' of frame 1
    loop = LoopEvaluator("predcls", "with")
    loop.add_video(example1_gt(), pred)
    assert_same_as_loop(evaluator, loop)


def test_semi_emitting_nothing_scores_zero():
    pred = example1_pred()
    for key in ("attention_distribution", "spatial_distribution", "contacting_distribution"):
        pred[key] = torch.zeros_like(pred[key])
    evaluator = evaluate("predcls", "semi", example1_gt(), pred)
    assert evaluator.frame_recalls[100].tolist() == [0.0, 0.0]


def test_wrong_attention_label_count_is_rejected():
    gt = example1_gt()
    gt[1][1]["attention_relationship"] = torch.LongTensor([0, 1])
    with pytest.raises(ValueError, match="2 attention labels"):
        SceneGraphEvaluator("predcls").add_video(gt, example1_pred())


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("pair_idx"), "missing key 'pair_idx'"),
    (lambda p: p.__setitem__("pair_idx", torch.tensor([[0, 1], [0, 2], [3, 9]])), "pair_idx"),
    (lambda p: p.__setitem__("spatial_distribution", torch.zeros(3, 5)), "spatial_distribution"),
    (lambda p: p["contacting_distribution"].__setitem__((0, 0), float("nan")), "NaN"),
    (lambda p: p.__setitem__("im_idx", torch.zeros(2)), "im_idx"),
])
def test_bad_predictions_are_rejected_by_name(change, message):
    pred = example1_pred()
    change(pred)
    with pytest.raises(ValueError, match=message):
        SceneGraphEvaluator("predcls").add_video(example1_gt(), pred)


def test_bad_gt_is_rejected_by_name():
    gt = example1_gt()
    gt[0][0]["person_bbox"] = np.zeros((2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="frame 0 person_bbox must hold exactly one box"):
        pack_gt(gt)
    gt = example1_gt()
    gt[1][1]["spatial_relationship"] = torch.LongTensor([6])
    with pytest.raises(ValueError, match="spatial_relationship index 6"):
        pack_gt(gt)
    with pytest.raises(TypeError, match="gt_annotation"):
        pack_gt({"frames": []})


@pytest.mark.parametrize("options", [dict(mode="predcl"), dict(mode="predcls", constraint=True),
                                     dict(mode="predcls", semi_threshold=-0.1), dict(mode="predcls", ks=(0,)),
                                     dict(mode="predcls", iou_threshold=float("nan"))])
def test_bad_options_are_rejected(options):
    with pytest.raises(ValueError):
        SceneGraphEvaluator(**options)


def test_packed_prediction_must_match_the_evaluator():
    packed = pack_prediction(example1_pred(), "predcls", 2)
    with pytest.raises(ValueError, match="packed for mode='predcls'"):
        SceneGraphEvaluator("sgcls").add_video(example1_gt(), packed)


def test_summary_before_any_video():
    summary = SceneGraphEvaluator("predcls").summary()
    assert all(np.isnan(summary["R"][k]) for k in KS)
    assert summary["mR"] == {k: 0.0 for k in KS}
    assert summary["num_frames"] == 0


# --------------------------------------------------------------------------- reset and epochs (Q-E1)


def test_reset_keeps_mean_recall_counts_by_default_like_the_reference():
    evaluator = evaluate("predcls", "with", example1_gt(), example1_pred())
    first = evaluator.summary()
    evaluator.reset()
    assert evaluator.num_frames == 0
    gt, pred = example2()
    evaluator.add_video(gt, pred)
    fresh = evaluate("predcls", "with", gt, pred).summary()
    assert evaluator.summary()["R"] == fresh["R"]                # R@K restarts
    assert evaluator.summary()["mR"] != fresh["mR"]              # mR@K keeps the first round's counts
    assert evaluator.counts[20].sum() == sum(EXAMPLE1_COUNTS) + 24
    assert first["mR"][20] == pytest.approx(0.269231, abs=5e-7)


def test_epoch_reset_clears_mean_recall_counts():
    gt, pred = example2()
    fresh = evaluate("predcls", "with", gt, pred).summary()
    for evaluator, reset in ((evaluate("predcls", "with", example1_gt(), example1_pred(), epoch_reset=True), None),
                             (evaluate("predcls", "with", example1_gt(), example1_pred()), True)):
        evaluator.reset(counts=reset)
        evaluator.add_video(gt, pred)
        assert evaluator.summary() == fresh


def test_per_predicate_recall_names():
    recall = evaluate("predcls", "with", example1_gt(), example1_pred()).per_predicate_recall(20)
    assert list(recall) == list(PREDICATES)
    assert recall["holding"] == pytest.approx(1.0) and recall["touching"] == 0.0


def test_empty_video_and_custom_k_values():
    empty = entry(np.zeros((0, 5)), [], [], [], np.zeros((0, 3)), np.zeros((0, 6)), np.zeros((0, 17)))
    evaluator = SceneGraphEvaluator("predcls", "no", ks=(100, 5))
    evaluator.add_video([], empty)
    assert evaluator.num_frames == 0
    evaluator.add_video(example1_gt(), example1_pred())
    gt, pred = example2()
    evaluator.add_video(gt, pred)
    reference = SceneGraphEvaluator("predcls", "no")
    reference.add_video(example1_gt(), example1_pred())
    reference.add_video(gt, pred)
    assert evaluator.summary()["R"][100] == reference.summary()["R"][100]
    assert list(evaluator.summary()["R"]) == [100, 5]
    assert evaluator.hits[5].sum() <= reference.hits[10].sum()
    with pytest.raises(ValueError, match="distinct"):
        SceneGraphEvaluator("predcls", ks=(20, 20))
