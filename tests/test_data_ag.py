"""Action Genome loader: counts, order and gt_annotations format on the bundled synthetic sample,
the reference filters, and bad input (clear messages, the rest still loads, everything counted)."""

from __future__ import annotations

import pathlib
import pickle
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from fremure.data.ag import (
    OBJECT_CLASSES, RELATIONSHIP_CLASSES, ActionGenome, AnnotationError, annotation_paths, read_class_file,
)
from fremure.data.safe_pickle import UnsafePickleError
from fremure.data.synthetic import generate_synthetic_ag, sample_path

SPLITS = ("train", "test")
ATTENTION, SPATIAL, CONTACTING = RELATIONSHIP_CLASSES[:3], RELATIONSHIP_CLASSES[3:9], RELATIONSHIP_CLASSES[9:]


def _raw(root: pathlib.Path, filter_small_box: bool) -> tuple[dict, dict]:
    paths = annotation_paths(root, filter_small_box)
    with open(paths["person_bbox"], "rb") as f:
        person = pickle.load(f)  # trusted: written by our generator
    with open(paths["object_bbox"], "rb") as f:
        objects = pickle.load(f)
    return person, objects


def _expected(root: pathlib.Path, mode: str, filter_small_box: bool) -> dict:
    """Counts of the docs/ag_and_eval.md 1.7 rules, computed directly from the raw pickles (no loader code)."""
    person, objects = _raw(root, filter_small_box)
    in_split = [k for k in person if objects[k][0]["metadata"]["set"] == mode]
    with_visible = [k for k in in_split if any(o["visible"] for o in objects[k])]
    with_person = [k for k in with_visible if len(person[k]["bbox"]) > 0]
    per_video: dict[str, list[str]] = {}
    for key in with_person:
        per_video.setdefault(key.split("/")[0], []).append(key)
    videos_with_candidates = {k.split("/")[0] for k in with_visible}
    kept = [v for v, keys in per_video.items() if len(keys) >= 3]
    lengths = [len(per_video.get(v, [])) for v in videos_with_candidates]
    return {
        "videos": len(kept),
        "kept_frames": sum(len(per_video[v]) for v in kept),
        "kept_objects": sum(sum(o["visible"] for o in objects[k]) for v in kept for k in per_video[v]),
        "valid_nums": len(with_person),
        "non_gt_human_nums": len(with_visible) - len(with_person),
        "one_frame_video": lengths.count(1),
        "two_frame_video": lengths.count(2),
        "empty_video": lengths.count(0),
        "non_person_video": lengths.count(0) + lengths.count(2),
        "frames_in_split": len(in_split),
        "frames_without_visible_object": len(in_split) - len(with_visible),
        "videos_in_split": len({k.split("/")[0] for k in in_split}),
        "videos_without_visible_object": len({k.split("/")[0] for k in in_split} - videos_with_candidates),
        "kept_names": kept,
    }


@pytest.fixture(scope="module")
def sample() -> pathlib.Path:
    return sample_path()


@pytest.fixture(scope="module")
def loaded(sample) -> dict:
    return {(m, fs): ActionGenome(sample, m, filter_small_box=fs) for m in SPLITS for fs in (False, True)}


@pytest.mark.parametrize("mode", SPLITS)
@pytest.mark.parametrize("filter_small_box", [False, True])
def test_counts_match_hand_computed(sample, loaded, mode, filter_small_box):
    ds = loaded[(mode, filter_small_box)]
    expected = _expected(sample, mode, filter_small_box)
    report = ds.report()
    for key, value in expected.items():
        if key != "kept_names":
            assert report[key] == value, key
    assert ds.valid_video_names == expected["kept_names"]
    assert len(ds) == len(ds.video_list) == len(ds.gt_annotations) == len(ds.video_size) == expected["videos"]
    assert ds.non_heatmap_nums == 0 and report["issues"] == {} and ds.issues == []
    assert report["dropped_frames_by_issue"] == report["dropped_objects_by_issue"] == 0
    # Every frame of the split is accounted for, and so is every video.
    assert report["frames_in_split"] == (report["frames_without_visible_object"] + report["valid_nums"]
                                         + report["non_gt_human_nums"])
    assert report["videos_in_split"] == (report["videos"] + report["non_person_video"] + report["one_frame_video"]
                                         + report["videos_without_visible_object"])


def test_sample_exercises_every_filter(loaded):
    # The bundled sample must contain each case the loader filters, or the counts above prove little.
    for mode in SPLITS:
        r = loaded[(mode, False)].report()
        assert r["videos"] >= 3
        for key in ("non_gt_human_nums", "one_frame_video", "two_frame_video", "empty_video",
                    "frames_without_visible_object", "videos_without_visible_object"):
            assert r[key] >= 1, (mode, key)
        assert r["valid_nums"] > r["kept_frames"]  # valid_nums includes frames of dropped videos
    small = loaded[("train", True)].report()
    assert small["frames_without_visible_object"] > loaded[("train", False)].report()["frames_without_visible_object"]


def test_class_lists(loaded):
    ds = loaded[("train", False)]
    assert ds.object_classes == list(OBJECT_CLASSES) and len(ds.object_classes) == 37
    assert ds.relationship_classes == list(RELATIONSHIP_CLASSES) and len(ds.relationship_classes) == 26
    assert (ds.attention_relationships, ds.spatial_relationships, ds.contacting_relationships) == (
        list(ATTENTION), list(SPATIAL), list(CONTACTING))
    assert ds.object_classes[9] == "closet/cabinet" and ds.relationship_classes[13] == "have_it_on_the_back"


@pytest.mark.parametrize("mode", SPLITS)
def test_gt_annotations_format_spec_1_8(sample, loaded, mode):
    ds = loaded[(mode, False)]
    person, objects = _raw(sample, False)
    for keys, video, size in zip(ds.video_list, ds.gt_annotations, ds.video_size):
        assert len(keys) == len(video) >= 3
        assert size == person[keys[-1]]["bbox_size"]
        for key, frame in zip(keys, video):
            head = frame[0]
            assert set(head) == {"person_bbox", "frame"} and head["frame"] == key
            assert isinstance(head["person_bbox"], np.ndarray)
            assert head["person_bbox"].dtype == np.float32 and head["person_bbox"].shape == (1, 4)
            np.testing.assert_array_equal(head["person_bbox"], person[key]["bbox"])
            visible = [o for o in objects[key] if o["visible"]]
            assert len(frame) - 1 == len(visible) >= 1
            for obj, raw in zip(frame[1:], visible):
                assert set(obj) == {"class", "bbox", "attention_relationship", "spatial_relationship",
                                    "contacting_relationship", "metadata", "visible"}
                assert type(obj["class"]) is int and ds.object_classes[obj["class"]] == raw["class"]
                assert 1 <= obj["class"] <= 36
                x, y, w, h = raw["bbox"]
                assert obj["bbox"].dtype == np.float64 and obj["bbox"].shape == (4,)
                np.testing.assert_array_equal(obj["bbox"], np.array([x, y, x + w, y + h]))
                for name, table in (("attention", ATTENTION), ("spatial", SPATIAL), ("contacting", CONTACTING)):
                    labels = obj[f"{name}_relationship"]
                    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.dim() == 1
                    assert [table[i] for i in labels.tolist()] == raw[f"{name}_relationship"]
                assert obj["attention_relationship"].shape == (1,)
                assert obj["metadata"] == raw["metadata"] and obj["visible"] is True
                assert obj is not raw and obj["metadata"] is not raw["metadata"]  # fresh records (Q-D5)


@pytest.mark.parametrize("mode", SPLITS)
def test_video_and_frame_order_follow_person_keys(sample, loaded, mode):
    ds = loaded[(mode, False)]
    person, _ = _raw(sample, False)
    order = list(dict.fromkeys(k.split("/")[0] for k in person))
    positions = [order.index(v) for v in ds.valid_video_names]
    assert positions == sorted(positions)
    keys = list(person)
    for frames in ds.video_list:
        assert [keys.index(k) for k in frames] == sorted(keys.index(k) for k in frames)
    assert ds.invalid_video_names == sorted(set(ds.videos_in_split) - set(ds.valid_video_names))
    assert sorted(ds.dropped_videos) == ds.invalid_video_names
    reasons = Counter(ds.dropped_videos.values())
    assert reasons["only one frame with a person box"] == ds.one_frame_video
    assert reasons["no frame with a visible object"] == ds.videos_without_visible_object


def test_trailing_slash_and_pathlike_give_the_same_result(sample, loaded):
    reference = loaded[("test", False)]
    for root in (str(sample) + "/", str(sample), pathlib.Path(sample)):
        ds = ActionGenome(root, "test")
        assert ds.video_list == reference.video_list and ds.report() == reference.report()
    assert ds.frames_path.endswith("/") and ds.frame_paths(0)[0] == sample / "frames" / ds.video_list[0][0]


def test_filtersmall_keeps_no_small_box(loaded):
    for mode in SPLITS:
        ds = loaded[(mode, True)]
        boxes = np.array([o["bbox"] for v in ds.gt_annotations for f in v for o in f[1:]])
        assert (np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) > 16).all()
        assert ds.paths["object_bbox"].name == "object_bbox_and_relationship_filtersmall.pkl"


def test_filtersmall_path_option(sample, tmp_path):
    copy = tmp_path / "elsewhere.pkl"
    shutil.copy(annotation_paths(sample, True)["object_bbox"], copy)
    ds = ActionGenome(sample, "train", filter_small_box=True, filtersmall_path=copy)
    assert ds.report()["videos"] == ActionGenome(sample, "train", filter_small_box=True).report()["videos"]
    with pytest.raises(FileNotFoundError, match="missing.pkl.*filtersmall_path"):
        ActionGenome(sample, "train", filter_small_box=True, filtersmall_path=tmp_path / "missing.pkl")


def test_keeping_frames_without_person_box(sample, loaded):
    kept = ActionGenome(sample, "train", filter_nonperson_box_frame=False)
    strict = loaded[("train", False)]
    assert kept.non_gt_human_nums == strict.non_gt_human_nums
    empties = [f[0]["person_bbox"] for v in kept.gt_annotations for f in v if f[0]["person_bbox"].shape[0] == 0]
    assert empties and all(e.shape == (0, 4) and e.dtype == np.float32 for e in empties)
    assert kept.report()["kept_frames"] > strict.report()["kept_frames"]


def test_mini_datasize_reads_only_the_first_keys(sample):
    person, objects = _raw(sample, False)
    ds = ActionGenome(sample, "train", datasize="mini", mini_keys=40)
    first = set(list(person)[:40])
    assert all(k in first for v in ds.video_list for k in v)
    assert ds.report()["keys_skipped_by_datasize"] == len(person) - 40
    assert ds.frames_in_split == sum(1 for k in first if objects[k][0]["metadata"]["set"] == "train")


def test_check_frames_counts_missing_images(sample, tmp_path):
    root = tmp_path / "ag"
    shutil.copytree(sample, root)
    ds = ActionGenome(root, "train", check_frames=True)
    assert ds.missing_frame_images == 0
    (root / "frames" / ds.video_list[1][2]).unlink()
    shutil.rmtree(root / "frames" / ds.video_list[0][0].split("/")[0])
    ds = ActionGenome(root, "train", check_frames=True)
    assert ds.missing_frame_images == len(ds.video_list[0]) + 1
    assert ds.report()["issues"] == {"missing_frame_image": ds.missing_frame_images}
    assert len(ds) == len(ActionGenome(root, "train"))  # reported, not dropped
    assert ActionGenome(root, "train").missing_frame_images is None


def test_argument_checks(sample, tmp_path):
    with pytest.raises(ValueError, match="mode"):
        ActionGenome(sample, "val")
    with pytest.raises(ValueError, match="datasize"):
        ActionGenome(sample, "train", datasize="huge")
    with pytest.raises(FileNotFoundError, match="data_path"):
        ActionGenome(tmp_path / "nope", "train")


# ----------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("base")
    generate_synthetic_ag(root, num_videos=6, frames_per_video=(5, 6), seed=3, test_fraction=0.0,
                          objects_per_video=(2, 3), p_no_person=0.0, p_no_visible=0.0,
                          edge_case_videos=False, write_frames=False)
    return root


@pytest.fixture
def ag(base, tmp_path):
    """A fresh copy of the clean base dataset and helpers to tamper with its pickles."""
    root = tmp_path / "ag"
    shutil.copytree(base, root)
    paths = annotation_paths(root)

    class Tamper:
        person, objects = _raw(root, False)
        clean = ActionGenome(root, "train")

        @staticmethod
        def save():
            for key, data in (("person_bbox", Tamper.person), ("object_bbox", Tamper.objects)):
                with open(paths[key], "wb") as f:
                    pickle.dump(data, f)

        @staticmethod
        def visible(video_index=0, frame_index=0):
            key = Tamper.clean.video_list[video_index][frame_index]
            return key, [o for o in Tamper.objects[key] if o["visible"]]

    Tamper.root = root
    return Tamper


def _issue(ds: ActionGenome, kind: str):
    found = [i for i in ds.issues if i.kind == kind]
    assert found, f"no {kind} issue in {ds.issues}"
    return found[0]


def test_base_is_clean(ag):
    assert ag.clean.issues == [] and len(ag.clean) == 6


def test_missing_files_are_named(ag):
    paths = annotation_paths(ag.root)
    for role in ("person_bbox", "object_bbox", "object_classes", "relationship_classes"):
        root = ag.root.parent / f"missing_{role}"
        shutil.copytree(ag.root, root)
        annotation_paths(root)[role].unlink()
        with pytest.raises(FileNotFoundError, match=paths[role].name):
            ActionGenome(root, "train")


def test_class_file_with_wrong_line_count(ag):
    path = annotation_paths(ag.root)["object_classes"]
    path.write_text(path.read_text() + "\n")
    with pytest.raises(ValueError, match=r"object_classes.txt: expected 36 lines, found 37"):
        ActionGenome(ag.root, "train")


def test_class_file_rename_mismatch_is_a_warning(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("a\nb\nc\n")
    names, mismatches = read_class_file(path, 3, {1: "bee"})
    assert names == ["a", "bee", "c"] and len(mismatches) == 1


@pytest.mark.parametrize("which", ["person_bbox", "object_bbox"])
def test_pickle_of_wrong_structure(ag, which):
    with open(annotation_paths(ag.root)[which], "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(TypeError, match=rf"{annotation_paths(ag.root)[which].name}: expected a pickled dict.*list"):
        ActionGenome(ag.root, "train")


def test_malicious_annotation_pickle_is_refused(ag):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    ag.person["evil"] = Payload()
    ag.save()
    with pytest.raises(UnsafePickleError, match=r"person_bbox.pkl: refusing to load global 'builtins.print'"):
        ActionGenome(ag.root, "train")


def _reload(ag, **kwargs) -> ActionGenome:
    ag.save()
    return ActionGenome(ag.root, "train", **kwargs)


def test_object_problems_drop_only_that_object(ag):
    key, visible = ag.visible(0, 1)
    n_objects = ag.clean.report()["kept_objects"]
    visible[0]["class"] = "unicorn"
    key2, visible2 = ag.visible(1, 2)
    visible2[0]["bbox"] = None
    key3, visible3 = ag.visible(2, 0)
    visible3[0]["attention_relationship"] = []
    key4, visible4 = ag.visible(3, 0)
    visible4[0]["contacting_relationship"] = ["flying"]
    ds = _reload(ag)
    for kind, k in (("unknown_class", key), ("visible_without_bbox", key2), ("attention_count", key3),
                    ("unknown_predicate", key4)):
        issue = _issue(ds, kind)
        assert (issue.video, issue.frame) == tuple(k.split("/")) and issue.dropped == "object"
        assert k.split("/")[0] in str(issue) and issue.file.endswith("object_bbox_and_relationship.pkl")
    report = ds.report()
    assert report["dropped_objects_by_issue"] == 4 and report["kept_objects"] == n_objects - 4
    assert len(ds) == len(ag.clean) and ds.video_list == ag.clean.video_list
    with pytest.raises(AnnotationError, match="unicorn"):
        ActionGenome(ag.root, "train", strict=True)


def test_frame_with_only_bad_objects_is_dropped_and_counted(ag):
    key, visible = ag.visible(0, 0)
    for obj in visible:
        obj["class"] = "unicorn"
    ds = _reload(ag)
    assert _issue(ds, "no_valid_object").dropped == "frame"
    assert key not in ds.video_list[0] and len(ds.video_list[0]) == len(ag.clean.video_list[0]) - 1
    assert ds.report()["dropped_frames_by_issue"] == 1
    assert ds.valid_nums == ag.clean.valid_nums - 1


def test_empty_spatial_and_contacting_lists_are_kept_with_a_warning(ag):
    key, visible = ag.visible(0, 0)
    visible[0]["spatial_relationship"] = []
    visible[0]["contacting_relationship"] = None
    ds = _reload(ag)
    obj = ds.gt_annotations[0][0][1]
    assert obj["spatial_relationship"].shape == (0,) and obj["contacting_relationship"].shape == (0,)
    assert obj["spatial_relationship"].dtype == torch.int64
    assert ds.issue_counts() == {"empty_spatial_relationship": 1, "empty_contacting_relationship": 1}
    assert all(i.severity == "warning" for i in ds.issues)
    ActionGenome(ag.root, "train", strict=True)  # warnings do not raise


def test_boxes_outside_the_image_are_kept_with_a_warning(ag):
    key, visible = ag.visible(1, 0)
    x, y, w, h = visible[0]["bbox"]
    visible[0]["bbox"] = (-5.0, y, w + 500.0, h)
    ag.person[ag.clean.video_list[2][1]]["bbox"] = np.array([[-1.0, 0.0, 50.0, 999.0]], np.float32)
    ds = _reload(ag)
    assert ds.issue_counts() == {"bbox_outside_image": 2}
    np.testing.assert_array_equal(ds.gt_annotations[1][0][1]["bbox"], [-5.0, y, w + 495.0, y + h])
    assert {i.file.rsplit("/", 1)[-1] for i in ds.issues} == {"person_bbox.pkl", "object_bbox_and_relationship.pkl"}


def test_person_box_problems_drop_the_frame(ag):
    two = ag.clean.video_list[0][1]
    ag.person[two]["bbox"] = np.zeros((2, 4), np.float32)
    wrong = ag.clean.video_list[1][0]
    ag.person[wrong]["bbox"] = np.zeros((1, 3), np.float32)
    ds = _reload(ag)
    assert _issue(ds, "multiple_person_boxes").frame == two.split("/")[1]
    assert _issue(ds, "bad_person_box").frame == wrong.split("/")[1]
    assert ds.report()["dropped_frames_by_issue"] == 2
    assert two not in ds.video_list[0] and wrong not in ds.video_list[1]


def test_video_without_person_box_and_two_frame_video(ag):
    for key in ag.clean.video_list[0]:
        ag.person[key]["bbox"] = np.zeros((0, 4), np.float32)
    for key in ag.clean.video_list[1][2:]:
        ag.person[key]["bbox"] = np.zeros((0, 4), np.float32)
    ds = _reload(ag)
    r = ds.report()
    assert r["videos"] == len(ag.clean) - 2 and r["empty_video"] == 1 and r["two_frame_video"] == 1
    assert r["non_person_video"] == 2
    assert r["non_gt_human_nums"] == len(ag.clean.video_list[0]) + len(ag.clean.video_list[1]) - 2
    assert ds.issues == []  # ordinary filtering, not an annotation problem
    assert ag.clean.valid_video_names[0] in ds.invalid_video_names
    assert ds.dropped_videos == {ag.clean.valid_video_names[0]: "no frame with a person box",
                                 ag.clean.valid_video_names[1]: "only two frames with a person box"}


def test_frame_entry_problems(ag):
    empty = ag.clean.video_list[0][0]
    ag.objects[empty] = []
    missing = ag.clean.video_list[1][0]
    del ag.objects[missing]
    nosplit = ag.clean.video_list[2][0]
    ag.objects[nosplit][0]["metadata"] = None
    ag.objects["ZZZZZ.mp4/000001.png"] = ag.objects[ag.clean.video_list[3][0]]
    ds = _reload(ag)
    assert ds.issue_counts() == {"bad_object_entry": 1, "missing_object_entry": 1, "missing_split": 1,
                                 "object_key_without_person_entry": 1}
    assert ds.report()["dropped_frames_by_issue"] == 3
    assert len(ds) == len(ag.clean)


def test_unsorted_frames_are_reported_and_can_be_sorted(ag):
    keys = list(ag.person)
    first = ag.clean.video_list[0]
    i, j = keys.index(first[0]), keys.index(first[1])
    keys[i], keys[j] = keys[j], keys[i]
    ag.person = {k: ag.person[k] for k in keys}
    ds = _reload(ag)
    assert _issue(ds, "unsorted_frames").video == first[0].split("/")[0]
    assert ds.video_list[0][:2] == [first[1], first[0]]  # reference order kept
    fixed = ActionGenome(ag.root, "train", sort_frames=True)
    assert fixed.video_list[0] == first


def test_mixed_frame_sizes_are_reported(ag):
    ag.person[ag.clean.video_list[0][0]]["bbox_size"] = (640, 480)
    ds = _reload(ag)
    assert ds.issue_counts() == {"mixed_frame_size": 1}


def test_video_with_frames_of_both_splits(ag):
    moved = ag.clean.video_list[0][0]
    for obj in ag.objects[moved]:
        obj["metadata"]["set"] = "test"
    ds = _reload(ag)
    issue = _issue(ds, "mixed_split_video")
    assert issue.video == moved.split("/")[0] and issue.severity == "warning"
    assert moved not in ds.video_list[0] and ds.frames_in_split == ag.clean.frames_in_split - 1
    test = ActionGenome(ag.root, "test")
    assert test.one_frame_video == 1 and len(test) == 0
