"""Frequency priors (docs/ag_and_eval.md 4.3): published train+test pooling, train-only option, table, plot."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from fremure.data.ag import RELATIONSHIP_CLASSES, ActionGenome
from fremure.data.frequency import (
    frequency_table, main, normalise_counts, plot_long_tail, predicate_frequencies, relation_counts,
)
from fremure.data.synthetic import sample_path

SIZES = {"attention": 3, "spatial": 6, "contacting": 17}


@pytest.fixture(scope="module")
def splits():
    return ActionGenome(sample_path(), "train"), ActionGenome(sample_path(), "test")


def _counter_counts(*datasets, rel_type):
    """docs/ag_and_eval.md 4.3 literally: list every label of every object of every frame, then count."""
    labels = []
    for ds in datasets:
        for video in ds.gt_annotations:
            for frame in video:
                for obj in frame:
                    if f"{rel_type}_relationship" in obj:
                        labels.extend(obj[f"{rel_type}_relationship"].tolist())
    counter = Counter(labels)
    return np.array([counter[i] for i in range(SIZES[rel_type])], dtype=np.float32)


def test_published_priors_pool_train_and_test(splits):
    freqs = predicate_frequencies(*splits)
    assert set(freqs) == set(SIZES)
    for rel_type, size in SIZES.items():
        counts = _counter_counts(*splits, rel_type=rel_type)
        expected = torch.from_numpy(counts / (counts.sum() + 1e-12))
        assert freqs[rel_type].dtype == torch.float32 and freqs[rel_type].shape == (size,)
        assert torch.equal(freqs[rel_type], expected)
        assert abs(float(freqs[rel_type].sum()) - 1.0) < 1e-6


def test_train_only_option(splits):
    train, test = splits
    pooled = predicate_frequencies(train, test)
    train_only = predicate_frequencies(train, test, include_test=False)
    assert all(torch.equal(train_only[k], predicate_frequencies(train, include_test=False)[k]) for k in SIZES)
    for rel_type in SIZES:
        counts = _counter_counts(train, rel_type=rel_type)
        assert torch.equal(train_only[rel_type], torch.from_numpy(counts / (counts.sum() + 1e-12)))
    assert any(not torch.equal(pooled[k], train_only[k]) for k in SIZES)
    with pytest.raises(ValueError, match="include_test=False"):
        predicate_frequencies(train)


def test_counts_accept_annotation_lists_and_check_labels(splits):
    train, _ = splits
    counts = relation_counts(train.gt_annotations)
    assert {k: v.dtype for k, v in counts.items()} == {k: np.int64 for k in SIZES}
    assert all(np.array_equal(counts[k], _counter_counts(train, rel_type=k).astype(np.int64)) for k in SIZES)
    bad = [[[{"person_bbox": None}, {"attention_relationship": torch.tensor([3]),
                                     "spatial_relationship": torch.tensor([0]), "contacting_relationship": torch.tensor([])}]]]
    with pytest.raises(ValueError, match=r"attention labels must lie in \[0, 3\)"):
        relation_counts(bad)
    with pytest.raises(TypeError, match="ActionGenome or its gt_annotations"):
        relation_counts("train")  # type: ignore[arg-type]
    empty = relation_counts([])
    assert all(v.sum() == 0 for v in empty.values())
    assert torch.equal(normalise_counts(empty["spatial"]), torch.zeros(6))


def test_normalisation_is_float32_like_the_reference():
    counts = np.array([7, 0, 123456, 3], dtype=np.int64)
    out = normalise_counts(counts)
    as_float32 = counts.astype(np.float32)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), as_float32 / np.float32(as_float32.sum()))


def test_table(splits):
    counts = relation_counts(*splits)
    table = frequency_table(counts)
    assert list(table["predicate"]) == list(RELATIONSHIP_CLASSES) and list(table["global_index"]) == list(range(26))
    assert list(table["group"]) == ["attention"] * 3 + ["spatial"] * 6 + ["contacting"] * 17
    freqs = predicate_frequencies(*splits)
    for rel_type in SIZES:
        rows = table[table["group"] == rel_type]
        assert list(rows["count"]) == counts[rel_type].tolist()
        np.testing.assert_array_equal(rows["frequency"].to_numpy(dtype=np.float32), freqs[rel_type].numpy())
    assert abs(table["share"].sum() - 1.0) < 1e-12
    assert table.loc[table["rank"] == 1, "count"].item() == table["count"].max()
    assert sorted(table["rank"]) == list(range(1, 27))
    with pytest.raises(ValueError, match="shape"):
        frequency_table({**counts, "spatial": counts["spatial"][:5]})


def test_plot_and_cli(splits, tmp_path):
    path = plot_long_tail(relation_counts(*splits), tmp_path / "plots" / "tail.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1200, 550)
    assert main([str(sample_path()), "--out", str(tmp_path / "cli")]) == 0
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "cli" / "predicate_frequencies.safetensors"))
    expected = predicate_frequencies(*splits)
    assert all(torch.equal(saved[k], expected[k]) for k in SIZES)
    assert (tmp_path / "cli" / "long_tail.png").stat().st_size > 0
    assert (tmp_path / "cli" / "predicate_frequencies.csv").read_text().startswith("predicate,group,")
