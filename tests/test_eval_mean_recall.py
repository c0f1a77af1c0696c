"""mR@K aggregation options of SceneGraphEvaluator against a hand-computed two-frame example
(docs/ag_and_eval.md 3.5 works the same numbers).

Frame 0: the person and one object; its three GT triplets (looking_at, in_front_of, holding) are
all predicted. Frame 1: the person and three objects with the same three labels each (9 triplets);
only the first object's are predicted. Per predicate p of the three: hits 1 of 1 in frame 0 and
1 of 3 in frame 1.

- pooled:    (1 + 1) / (1 + 3) = 1/2;           per_frame: (1/1 + 1/3) / 2 = 2/3
- 'all':     mean over 26 predicates, 23 of them never seen (0);  'seen': mean over the 3
- R@K (per frame, every option): (3/3 + 3/9) / 2 = 2/3
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fremure.eval import PREDICATES, PUBLISHED_MEAN_RECALL, MultiConstraintEvaluator, SceneGraphEvaluator

SEEN = [PREDICATES.index(name) for name in ("looking_at", "in_front_of", "holding")]
EXPECTED_MR = {("pooled", "all"): 3 * (1 / 2) / 26, ("pooled", "seen"): 1 / 2,
               ("per_frame", "all"): 3 * (2 / 3) / 26, ("per_frame", "seen"): 2 / 3}


def _object(cls: int, box: list[float]) -> dict:
    # looking_at (attention 0), in_front_of (spatial 2), holding (contacting 5)
    return {"class": cls, "bbox": np.array(box, dtype=np.float64), "attention_relationship": torch.LongTensor([0]),
            "spatial_relationship": torch.LongTensor([2]), "contacting_relationship": torch.LongTensor([5]),
            "metadata": {"tag": "t", "set": "test"}, "visible": True}


def _person(box: list[float], frame: str) -> dict:
    return {"person_bbox": np.array([box], dtype=np.float32), "frame": frame}


def _distributions(right: bool) -> tuple[list[float], list[float], list[float]]:
    """Score rows whose arg-max is the GT label (right) or another label."""
    attention = [0.8, 0.1, 0.1] if right else [0.1, 0.8, 0.1]
    spatial = [0.05] * 6
    spatial[2 if right else 3] = 0.9
    contacting = [0.02] * 17
    contacting[5 if right else 6] = 0.9
    return attention, spatial, contacting


def example() -> tuple[list, dict]:
    person = [0, 0, 100, 200]
    object_boxes = [[10, 10, 40, 40], [50, 50, 90, 90], [20, 120, 60, 180]]
    gt = [[_person(person, "V.mp4/000001.png"), _object(5, object_boxes[0])],
          [_person(person, "V.mp4/000002.png")] + [_object(5 + i, box) for i, box in enumerate(object_boxes)]]
    boxes = [[0, *person], [0, *object_boxes[0]], [1, *person]] + [[1, *box] for box in object_boxes]
    labels = [1, 5, 1, 5, 6, 7]
    rows = [_distributions(True), _distributions(True), _distributions(False), _distributions(False)]
    pred = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "scores": torch.ones(len(labels)), "pair_idx": torch.tensor([[0, 1], [2, 3], [2, 4], [2, 5]]),
            "im_idx": torch.tensor([0.0, 1.0, 1.0, 1.0]),
            "attention_distribution": torch.tensor([r[0] for r in rows]),
            "spatial_distribution": torch.tensor([r[1] for r in rows]),
            "contacting_distribution": torch.tensor([r[2] for r in rows])}
    return gt, pred


def _summary(**options) -> dict:
    evaluator = SceneGraphEvaluator("predcls", "with", **options)
    evaluator.add_video(*example())
    return evaluator.summary()


@pytest.mark.parametrize("aggregation,predicates", sorted(EXPECTED_MR))
def test_each_aggregation_gives_the_hand_computed_mean_recall(aggregation, predicates):
    summary = _summary(mean_recall=aggregation, mean_recall_predicates=predicates)
    for k in (10, 20, 50, 100):
        assert summary["mR"][k] == pytest.approx(EXPECTED_MR[aggregation, predicates], abs=1e-9)
        assert summary["R"][k] == pytest.approx(2 / 3, abs=1e-12)     # R@K does not depend on the option
    per_predicate = np.asarray(summary["per_predicate"][20])
    expected = 0.5 if aggregation == "pooled" else 2 / 3
    np.testing.assert_allclose(per_predicate[SEEN], expected, atol=1e-9)
    assert np.count_nonzero(per_predicate) == 3
    assert (summary["mean_recall"], summary["mean_recall_predicates"]) == (aggregation, predicates)


def test_the_four_options_give_four_different_numbers():
    values = {key: _summary(mean_recall=key[0], mean_recall_predicates=key[1])["mR"][20] for key in EXPECTED_MR}
    assert len({round(v, 9) for v in values.values()}) == 4


def test_the_default_is_the_tempura_fremure_pooled_mean_over_26():
    assert PUBLISHED_MEAN_RECALL == {"sttran": None, "tempura": ("pooled", "all"), "fremure": ("pooled", "all")}
    assert _summary()["mR"] == _summary(mean_recall="pooled", mean_recall_predicates="all")["mR"]
    assert _summary()["mR"][20] == pytest.approx(3 * 0.5 / 26, abs=1e-9)     # the reference divides by count + 1e-10


def test_per_frame_sums_are_cleared_with_the_counts_and_survive_a_plain_reset():
    evaluator = SceneGraphEvaluator("predcls", "with", mean_recall="per_frame")
    evaluator.add_video(*example())
    evaluator.reset()                                  # reference reset: mR@K keeps accumulating (Q-E1)
    assert evaluator.summary()["mR"][20] == pytest.approx(2 / 26, abs=1e-12)
    evaluator.reset(counts=True)
    evaluator.add_video(*example())
    evaluator.add_video(*example())                     # the same video twice: the same per-frame mean
    assert evaluator.summary()["mR"][20] == pytest.approx(2 / 26, abs=1e-12)


def test_seen_is_nan_before_any_ground_truth():
    evaluator = SceneGraphEvaluator("predcls", "with", mean_recall_predicates="seen")
    assert np.isnan(evaluator.summary()["mR"][20])


def test_multi_constraint_evaluator_passes_the_options_on():
    evaluator = MultiConstraintEvaluator("predcls", mean_recall="per_frame", mean_recall_predicates="seen")
    evaluator.add_video(*example())
    assert evaluator.summary()["with"]["mR"][20] == pytest.approx(2 / 3, abs=1e-9)


@pytest.mark.parametrize("name,value", [("mean_recall", "mean"), ("mean_recall_predicates", "present")])
def test_unknown_option_is_rejected_naming_the_argument(name, value):
    with pytest.raises(ValueError, match=name):
        SceneGraphEvaluator("predcls", **{name: value})


def test_fremure_eval_flags_reach_the_evaluator():
    from fremure.cli import build_parser
    from fremure.cli_args import mean_recall_options
    from fremure.pipeline import evaluate_predictions
    args = build_parser().parse_args(["eval", "--data-path", "ag", "--out", "out", "--mean-recall", "per_frame",
                                      "--mean-recall-predicates", "seen"])
    options = mean_recall_options(args)
    assert options == {"mean_recall": "per_frame", "mean_recall_predicates": "seen"}
    gt, pred = example()
    results = evaluate_predictions("predcls", [(0, pred)], [gt], evaluator_options=options)
    assert results["with"]["mR"][20] == pytest.approx(2 / 3, abs=1e-9)
    default = build_parser().parse_args(["eval", "--data-path", "ag", "--out", "out"])
    assert mean_recall_options(default) == {"mean_recall": "pooled", "mean_recall_predicates": "all"}
