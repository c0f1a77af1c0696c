"""Synthetic AG: real on-disk format, determinism, the bundled sample, labels tied to geometry."""

from __future__ import annotations

import json
import pathlib
import pickle
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from fremure.data.ag import OBJECT_CLASSES, RELATIONSHIP_CLASSES, ActionGenome, annotation_paths
from fremure.data.synthetic import SAMPLE_CONFIG, generate_synthetic_ag, main, sample_path, write_sample

PICKLES = ("person_bbox.pkl", "object_bbox_and_relationship.pkl", "object_bbox_and_relationship_filtersmall.pkl")


def _load(path: pathlib.Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _assert_same(a, b) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("small")
    generate_synthetic_ag(root, num_videos=4, frames_per_video=(3, 5), seed=11, image_size=(96, 64))
    return root


def test_regenerating_the_sample_reproduces_it(tmp_path):
    committed = sample_path()
    write_sample(tmp_path)
    for name in ("object_classes.txt", "relationship_classes.txt"):
        assert (tmp_path / "annotations" / name).read_bytes() == (committed / "annotations" / name).read_bytes()
    assert (tmp_path / "synthetic_manifest.json").read_bytes() == (committed / "synthetic_manifest.json").read_bytes()
    for name in PICKLES:
        new, old = (tmp_path / "annotations" / name).read_bytes(), (committed / "annotations" / name).read_bytes()
        _assert_same(pickle.loads(old), pickle.loads(new))
        if (b"numpy._core" in old) == (b"numpy._core" in new):  # same numpy major: same pickle bytes
            assert new == old
    new_frames = sorted(p.relative_to(tmp_path) for p in (tmp_path / "frames").rglob("*.png"))
    old_frames = sorted(p.relative_to(committed) for p in (committed / "frames").rglob("*.png"))
    assert new_frames == old_frames
    for rel in new_frames:
        with Image.open(tmp_path / rel) as a, Image.open(committed / rel) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)), rel


def test_bundled_sample_is_small_and_as_configured():
    root = sample_path()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 2 * 1024 * 1024
    manifest = json.loads((root / "synthetic_manifest.json").read_text())
    assert manifest["config"]["seed"] == SAMPLE_CONFIG["seed"]
    normal = [v for v in manifest["videos"] if v["kind"] == "normal"]
    assert Counter(v["split"] for v in normal) == {"train": 12, "test": 6}
    assert all(6 <= len(v["frame_keys"]) <= 10 for v in normal)
    with Image.open(next((root / "frames").rglob("*.png"))) as image:
        assert image.size == (128, 96) and image.mode == "RGB"


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = dict(num_videos=5, frames_per_video=(3, 4), write_frames=False)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_synthetic_ag(tmp_path / name, seed=seed, **kwargs)
    for pkl in PICKLES:
        a, b, c = ((tmp_path / n / "annotations" / pkl).read_bytes() for n in "abc")
        assert a == b and a != c


def test_on_disk_format(small):
    person = _load(small / "annotations" / "person_bbox.pkl")
    objects = _load(small / "annotations" / "object_bbox_and_relationship.pkl")
    assert list(person) == sorted(person) and set(objects) == set(person) and list(objects) != list(person)
    lines = (small / "annotations" / "object_classes.txt").read_text().split("\n")
    assert len(lines) == 37 and lines[-1] == "" and lines[8] == "closetcabinet "
    assert "_" not in (small / "annotations" / "relationship_classes.txt").read_text()
    splits: dict[str, set] = {}
    for key, entry in person.items():
        video, frame = key.split("/")
        assert video.endswith(".mp4") and len(video) == 9 and frame.endswith(".png") and len(frame) == 10
        assert set(entry) == {"bbox", "bbox_score", "bbox_size", "bbox_mode", "keypoints", "keypoints_logits"}
        k = entry["bbox"].shape[0]
        assert k in (0, 1) and entry["bbox"].dtype == np.float32 and entry["bbox"].shape == (k, 4)
        assert entry["keypoints"].shape == (k, 17, 3) and entry["keypoints_logits"].shape == (k, 17)
        assert entry["bbox_size"] == (96, 64) and entry["bbox_mode"] == "xyxy"
        with Image.open(small / "frames" / key) as image:
            assert image.size == (96, 64) and image.mode == "RGB"
        for obj in objects[key]:
            assert set(obj) == {"class", "bbox", "attention_relationship", "spatial_relationship",
                                "contacting_relationship", "metadata", "visible"}
            assert obj["class"] in OBJECT_CLASSES[2:]
            assert obj["metadata"]["tag"] == f"{video}/{obj['class'].replace('/', '_')}/{frame[:-4]}"
            splits.setdefault(video, set()).add(obj["metadata"]["set"])
            if obj["visible"]:
                x, y, w, h = obj["bbox"]
                assert all(type(v) is float for v in obj["bbox"]) and w > 0 and h > 0
                assert 0 <= x and 0 <= y and x + w <= 96 + 1e-6 and y + h <= 64 + 1e-6
                assert len(obj["attention_relationship"]) == 1
                for name, group in (("attention", RELATIONSHIP_CLASSES[:3]), ("spatial", RELATIONSHIP_CLASSES[3:9]),
                                    ("contacting", RELATIONSHIP_CLASSES[9:])):
                    assert obj[f"{name}_relationship"] and set(obj[f"{name}_relationship"]) <= set(group)
            else:
                assert obj["bbox"] is None and obj["attention_relationship"] is None
    assert all(len(s) == 1 for s in splits.values())
    assert {s for v in splits.values() for s in v} == {"train", "test"}


def test_filtersmall_variant(small):
    full = _load(small / "annotations" / "object_bbox_and_relationship.pkl")
    filtered = _load(small / "annotations" / "object_bbox_and_relationship_filtersmall.pkl")
    assert list(full) == list(filtered)
    removed = 0
    for key in full:
        assert len(full[key]) == len(filtered[key])
        for a, b in zip(full[key], filtered[key]):
            if a["visible"] and min(a["bbox"][2:]) > 16:
                assert a == b
            else:
                removed += a["visible"]
                assert not b["visible"] and b["bbox"] is None and b["metadata"] == a["metadata"]
    assert removed > 0


def _boxes_and_labels(root: pathlib.Path):
    person = _load(root / "annotations" / "person_bbox.pkl")
    objects = _load(root / "annotations" / "object_bbox_and_relationship.pkl")
    for key, entry in person.items():
        if entry["bbox"].shape[0] == 0:
            continue
        p = entry["bbox"][0].astype(float)
        for obj in objects[key]:
            if obj["visible"]:
                x, y, w, h = obj["bbox"]
                yield p, np.array([x, y, x + w, y + h]), obj


@pytest.fixture(scope="module")
def larger(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("larger")
    generate_synthetic_ag(root, num_videos=80, frames_per_video=(6, 8), seed=2, write_frames=False)
    return root


def test_spatial_labels_follow_box_geometry(larger):
    checked = Counter()
    for p, o, obj in _boxes_and_labels(larger):
        spatial = obj["spatial_relationship"]
        ph = p[3] - p[1]
        overlap_x = min(o[2], p[2]) - max(o[0], p[0])
        if "on_the_side_of" in spatial:
            assert overlap_x <= 1e-3  # person boxes are stored as float32
        if "above" in spatial:
            assert o[3] <= p[1] + 0.1 * ph + 0.2
        if "beneath" in spatial:
            assert (o[1] + o[3]) / 2 >= p[1] + 0.75 * ph - 0.2
        if "in" in spatial:
            assert o[0] <= (p[0] + p[2]) / 2 <= o[2] and (o[2] - o[0]) * (o[3] - o[1]) > (p[2] - p[0]) * ph
        assert not {"in_front_of", "behind"} <= set(spatial)
        checked.update(spatial)
    assert set(checked) == set(RELATIONSHIP_CLASSES[3:9])


def test_contacting_labels_follow_overlap(larger):
    for p, o, obj in _boxes_and_labels(larger):
        contacting = obj["contacting_relationship"]
        inter = max(min(o[2], p[2]) - max(o[0], p[0]), 0) * max(min(o[3], p[3]) - max(o[1], p[1]), 0)
        if "not_contacting" in contacting:
            assert contacting == ["not_contacting"]
        else:
            assert inter > 0  # contact needs overlapping boxes


def test_predicates_are_long_tailed(larger):
    ds = ActionGenome(larger, "train")
    counts = Counter(RELATIONSHIP_CLASSES[9 + i] for v in ds.gt_annotations for f in v for o in f[1:]
                     for i in o["contacting_relationship"].tolist())
    ranked = [c for _, c in counts.most_common()]
    total = sum(ranked)
    assert sum(ranked[:3]) > 0.5 * total  # a few predicates dominate
    assert len(ranked) >= 12 and ranked[-1] < 0.02 * total  # and a long tail of rare ones
    classes = Counter(o["class"] for v in ds.gt_annotations for f in v for o in f[1:])
    assert classes.most_common(1)[0][1] > 4 * min(classes.values())


def test_protocol_2_pickles_load_through_the_safe_unpickler(tmp_path):
    generate_synthetic_ag(tmp_path, num_videos=3, frames_per_video=(3, 3), write_frames=False, pickle_protocol=2)
    assert b"_codecs" in annotation_paths(tmp_path)["person_bbox"].read_bytes()
    ds = ActionGenome(tmp_path, "train")
    assert ds.issues == [] and ds.frames_in_split > 0


def test_cli_and_overwrite(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--videos", "2", "--frames", "3", "3", "--size", "64", "48", "--no-frames",
            "--no-edge-cases", "--test-fraction", "0.5"]
    assert main(args) == 0
    assert "2 videos (1 train, 1 test)" in capsys.readouterr().out
    assert not (tmp_path / "frames").exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        main(args)
    assert main(args + ["--overwrite", "--seed", "4"]) == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_videos=-1), "num_videos"),
    (dict(frames_per_video=(4, 2)), "frames_per_video"),
    (dict(objects_per_video=(0, 2)), "objects_per_video"),
    (dict(objects_per_video=(1, 40)), "objects_per_video"),
    (dict(image_size=(16, 16)), "image_size"),
    (dict(test_fraction=1.5), "test_fraction"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_synthetic_ag(tmp_path, **kwargs)
