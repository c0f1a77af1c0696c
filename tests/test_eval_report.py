"""Tests of fremure.eval.report: text table, JSON round trip, per-predicate bar chart."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
import torch

from fremure.eval import PREDICATES, MultiConstraintEvaluator, format_table, plot_per_predicate, read_json, write_json


def _results():
    """{constraint: summary} of a small hand-made predcls video (two frames, three pairs)."""
    def obj(cls, box, att, spa, con):
        return {"class": cls, "bbox": np.array(box, dtype=np.float64), "attention_relationship": torch.tensor([att]),
                "spatial_relationship": torch.tensor(spa), "contacting_relationship": torch.tensor(con)}
    gt = [[{"person_bbox": np.array([[10, 10, 100, 200]], np.float32)}, obj(5, [50, 60, 80, 90], 0, [2], [5]),
           obj(8, [0, 100, 120, 240], 1, [1], [10])],
          [{"person_bbox": np.array([[12, 12, 102, 202]], np.float32)}, obj(5, [52, 60, 82, 92], 2, [2], [8])]]
    rng = np.random.default_rng(0)
    pred = {"boxes": torch.tensor([[0, 10, 10, 100, 200], [0, 50, 60, 80, 90], [0, 0, 100, 120, 240],
                                   [1, 12, 12, 102, 202], [1, 52, 60, 82, 92]], dtype=torch.float32),
            "labels": torch.tensor([1, 5, 8, 1, 5]), "scores": torch.ones(5),
            "pair_idx": torch.tensor([[0, 1], [0, 2], [3, 4]]), "im_idx": torch.tensor([0.0, 0.0, 1.0]),
            "attention_distribution": torch.softmax(torch.from_numpy(rng.normal(size=(3, 3))), 1).float(),
            "spatial_distribution": torch.from_numpy(rng.random((3, 6))).float(),
            "contacting_distribution": torch.from_numpy(rng.random((3, 17))).float()}
    evaluator = MultiConstraintEvaluator("predcls")
    evaluator.add_video(gt, pred)
    return evaluator.summary()


def test_format_table_lists_every_constraint_and_k():
    results = _results()
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["predcls", "R@10", "R@20", "R@50", "R@100"]
    assert "mR@100" in lines[0]
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert list(rows) == ["with", "semi", "no"]
    for constraint, line in rows.items():
        numbers = [float(x) for x in line.replace("|", " ").split()[1:]]
        expected = [results[constraint]["R"][k] * 100 for k in (10, 20, 50, 100)] + \
                   [results[constraint]["mR"][k] * 100 for k in (10, 20, 50, 100)]
        np.testing.assert_allclose(numbers, expected, atol=0.006)
    assert "(2 frames" in lines[-1]
    raw = format_table(results["no"], percent=False)
    assert f"{results['no']['R'][20]:.6f}" in raw


def test_json_round_trip(tmp_path):
    results = _results()
    path = write_json(results, tmp_path / "out" / "results.json")
    payload = json.loads(path.read_text())
    assert payload["predicates"] == list(PREDICATES)
    assert set(payload["results"]) == {"with", "semi", "no"}
    back = read_json(path)
    for constraint, summary in results.items():
        for key in ("R", "mR", "per_predicate"):
            assert back[constraint][key] == summary[key]
        assert back[constraint]["num_frames"] == 2


def test_json_writes_nan_as_null(tmp_path):
    summary = MultiConstraintEvaluator("sgdet", ["with"]).summary()     # no video: R@K is NaN
    path = write_json(summary, tmp_path / "empty.json")
    assert json.loads(path.read_text())["results"]["with"]["R"]["20"] is None
    assert np.isnan(read_json(path)["with"]["R"][20])


def test_plot_per_predicate_writes_a_png(tmp_path):
    path = plot_per_predicate(_results(), tmp_path / "plots" / "recall.png", k=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05           # not a blank canvas


def test_report_inputs_are_checked(tmp_path):
    results = _results()
    with pytest.raises(ValueError, match="k: 30"):
        plot_per_predicate(results, tmp_path / "x.png", k=30)
    with pytest.raises(ValueError, match="summary"):
        format_table({"with": {"R": {}}})
    with pytest.raises(TypeError):
        format_table([])
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="write_json"):
        read_json(tmp_path / "other.json")
