"""Entry builder: spatial masks, union boxes, IoU, GT layout, sgdet matching/SUPPLY, entries per mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fremure.data.features import (_sgdet_train_entry, box_iou_plus1, build_entry, gt_layout, match_detections,
                                   parse_frame_gt, spatial_masks, union_boxes)
from fremure.data.images import frames_to_blob

from detector_fakes import FRAME_H, FRAME_W, obj, person, random_video_gt, small_detector


def _slow_mask(pair: np.ndarray, size: int = 27) -> np.ndarray:
    """Per-cell float32 transcription of the rasterisation rule of docs/ag_and_eval.md 2.5 (before the -0.5)."""
    p = pair.astype(np.float32)
    ux1, uy1 = min(p[0], p[4]), min(p[1], p[5])
    w, h = max(p[2], p[6]) - ux1, max(p[3], p[7]) - uy1
    clip = lambda v: np.float32(min(max(v, np.float32(0)), np.float32(1)))
    out = np.zeros((2, size, size), dtype=np.float32)
    for c in range(2):
        x1 = (p[4 * c] - ux1) * np.float32(size) / w
        y1 = (p[4 * c + 1] - uy1) * np.float32(size) / h
        x2 = (p[4 * c + 2] - ux1) * np.float32(size) / w
        y2 = (p[4 * c + 3] - uy1) * np.float32(size) / h
        for j in range(size):
            y_part = clip(np.float32(j + 1) - y1) * clip(y2 - np.float32(j))
            for k in range(size):
                out[c, j, k] = clip(np.float32(k + 1) - x1) * clip(x2 - np.float32(k)) * y_part
    return out


# --- geometry --------------------------------------------------------------------------------
def test_spatial_mask_spec_vectors():
    first = spatial_masks(torch.tensor([[10.0, 20, 60, 120, 40, 50, 200, 100]]))[0] + 0.5
    subject, obj_ch = first[0], first[1]
    assert torch.all(subject[:, :7] == 1) and torch.all(subject[:, 8:] == 0)
    torch.testing.assert_close(subject[:, 7], torch.full((27,), 0.105263), atol=1e-6, rtol=0)
    # Y1 = 30*27/100 = 8.1, so rows 0-7 are empty, row 8 is 0.9 x the column ramp and row 21 is
    # 0.6 x it (the notes these vectors came from said "rows 0-15 = 0", a slip); docs/ag_and_eval.md 2.5.
    assert torch.all(obj_ch[:8] == 0) and torch.all(obj_ch[22:] == 0)
    torch.testing.assert_close(obj_ch[8], 0.9 * obj_ch[16], atol=1e-6, rtol=0)
    torch.testing.assert_close(obj_ch[21], 0.6 * obj_ch[16], atol=1e-6, rtol=0)
    torch.testing.assert_close(obj_ch[16, :6], torch.tensor([0, 0, 0, 0, 0.736842, 1]), atol=1e-6, rtol=0)
    assert torch.all(obj_ch[16, 5:] == 1)
    torch.testing.assert_close(first.sum((1, 2)), torch.tensor([191.8421, 306.94736]), atol=1e-3, rtol=0)
    second = spatial_masks(torch.tensor([[0.0, 0, 100, 100, 10, 10, 12, 13]]))[0, 1] + 0.5
    torch.testing.assert_close(second[2:4, 2:4], torch.tensor([[0.09, 0.072], [0.153, 0.1224]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(second.sum(), torch.tensor(0.4374), atol=1e-5, rtol=0)


def test_spatial_masks_equal_per_pair_loop():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 400, size=(40, 2, 2))
    wh = rng.uniform(0.3, 300, size=(40, 2, 2))
    pairs = np.concatenate([xy, xy + wh], 2).reshape(40, 8)
    pairs[0, 4:] = pairs[0, :4]                                   # identical boxes
    pairs[1, 4:] = [pairs[1, 0] + 1.2, pairs[1, 1] + 2.2, pairs[1, 0] + 1.5, pairs[1, 1] + 2.5]  # sub-cell box
    pairs[2] = np.round(pairs[2])                                 # integer pixels
    ours = spatial_masks(torch.from_numpy(pairs))
    assert ours.dtype == torch.float32 and ours.shape == (40, 2, 27, 27)
    expected = np.stack([_slow_mask(p) for p in pairs]) - np.float32(0.5)
    np.testing.assert_array_equal(ours.numpy(), expected)


def test_spatial_masks_zero_size_union_is_guarded():
    masks = spatial_masks(torch.tensor([[5.0, 5, 5, 20, 5, 8, 5, 9]]))   # zero-width union
    assert torch.isfinite(masks).all() and torch.all(masks == -0.5)
    assert spatial_masks(torch.zeros(0, 8)).shape == (0, 2, 27, 27)
    with pytest.raises(ValueError, match="pair_boxes"):
        spatial_masks(torch.zeros(3, 4))


def test_union_boxes():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(6, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 30], 1)
    pair_idx = torch.tensor([[0, 1], [0, 2], [3, 4], [3, 5]])
    im_idx = torch.tensor([0.0, 0.0, 1.0, 1.0])
    out = union_boxes(boxes, pair_idx, im_idx)
    for p, (s, o) in enumerate(pair_idx.tolist()):
        expected = [float(im_idx[p]), min(boxes[s, 0], boxes[o, 0]), min(boxes[s, 1], boxes[o, 1]),
                    max(boxes[s, 2], boxes[o, 2]), max(boxes[s, 3], boxes[o, 3])]
        assert out[p].tolist() == torch.tensor(expected).tolist()


def test_box_iou_plus1_spec_examples():
    pred = torch.tensor([[12.0, 14, 104, 205], [52, 62, 83, 94], [30, 150, 160, 300], [500, 500, 510, 510]])
    gt = torch.tensor([[10.0, 10, 100, 200], [50, 60, 80, 90], [0, 100, 120, 240]])
    iou = box_iou_plus1(pred, gt)
    assert iou.dtype == torch.float64
    torch.testing.assert_close(torch.diagonal(iou[:3]), torch.tensor([0.895074, 0.715136, 0.289941], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert torch.all(iou[3] == 0)


# --- GT layout and matching ------------------------------------------------------------------
def _frames():
    """Three hand-made frames exercising matching, the duplicate fallback, SUPPLY and Q-S2."""
    return [
        [person([10, 10, 50, 90], "v/0.png"), obj(5, [60, 20, 90, 50], [0], [1], [2]),
         obj(8, [62, 22, 92, 52], [1], [], [3, 4]), obj(12, [0, 0, 5, 5], [2], [5], [6])],
        [person([5, 5, 40, 40], "v/1.png"), obj(6, [50, 10, 70, 30], [0], [0], [7]),
         obj(7, [10, 50, 30, 70], [1], [2, 3], [8])],
        [person([0, 0, 20, 20], "v/2.png"), obj(3, [30, 30, 60, 60], [2], [4], [9]),
         obj(4, [70, 5, 95, 40], [0], [1], [10])],
    ]


DETS = torch.tensor([[0, 11, 11, 50, 88], [0, 60, 20, 91, 50], [0, 30, 60, 45, 75],       # frame 0
                     [2, 31, 30, 60, 61], [2, 70, 5, 95, 41], [2, 40, 0, 50, 10]], dtype=torch.float32)  # frame 2


def test_gt_layout_rows_and_pairs():
    frames = [parse_frame_gt(f) for f in _frames()]
    layout = gt_layout(frames)
    assert layout.boxes.shape == (10, 5) and layout.boxes.dtype == torch.float32
    assert layout.boxes[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert layout.labels.tolist() == [1, 5, 8, 12, 1, 6, 7, 1, 3, 4]
    assert layout.human_idx.tolist() == [[0], [4], [7]]
    assert layout.pair_idx.tolist() == [[0, 1], [0, 2], [0, 3], [4, 5], [4, 6], [7, 8], [7, 9]]
    assert layout.im_idx.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert layout.spatial_gt == [[1], [], [5], [0], [2, 3], [4], [1]]
    assert layout.boxes[1, 1:].tolist() == [60, 20, 90, 50]


def test_match_detections_reference_rules():
    frames = [parse_frame_gt(f) for f in _frames()]
    matches, assigned = match_detections(DETS, frames)
    # frame 0: object 2 falls back to the next detection in IoU order (IoU 0, not re-checked: Q-S3)
    assert (matches[0].found, matches[0].gt_order, matches[0].supply) == ([0, 1, 2], [0, 1, 2], [3])
    assert (matches[1].found, matches[1].gt_order, matches[1].supply) == ([], [], [0, 1, 2])
    assert (matches[2].found, matches[2].gt_order, matches[2].supply) == ([0, 1], [1, 2], [0])
    assert assigned.tolist() == [1, 5, 8, 3, 4, 0]


def _fake_detection_output(scale: float):
    g = torch.Generator().manual_seed(2)
    return {"boxes": DETS.clone(), "scores": torch.rand(6, generator=g), "features": torch.randn(6, 2048, generator=g),
            "fmaps": torch.randn(3, 1024, 12, 12, generator=g)}, torch.tensor([[96.0, 96.0, scale]] * 3)


@pytest.mark.parametrize("fix_human_row", [False, True])
def test_sgdet_training_entry_supply_and_pairs(fix_human_row):
    detector = small_detector()
    det, im_info = _fake_detection_output(scale=2.0)
    frames = [parse_frame_gt(f) for f in _frames()]
    with torch.no_grad():
        entry = _sgdet_train_entry(detector, det, im_info, frames, fix_human_row)
    # rows: frame 0 = 3 dets + supplied C; frame 1 = supplied P, A, B; frame 2 = 3 dets + supplied person
    assert entry["boxes"][:, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert entry["labels"].tolist() == [1, 5, 8, 12, 1, 6, 7, 3, 4, 0, 1]
    assert entry["scores"][[3, 4, 5, 6, 10]].tolist() == [1.0] * 5
    assert torch.equal(entry["scores"][[0, 1, 2, 7, 8, 9]], det["scores"])
    assert entry["boxes"][3, 1:].tolist() == [0, 0, 5, 5] and entry["boxes"][10, 1:].tolist() == [0, 0, 20, 20]
    assert torch.equal(entry["features"][[0, 1, 2, 7, 8, 9]], det["features"])
    supplied = torch.tensor([[0, 0, 0, 10, 10], [1, 10, 10, 80, 80]], dtype=torch.float32)
    torch.testing.assert_close(entry["features"][[3, 4]], detector.roi_features(det["fmaps"], supplied))
    human2 = 10 if fix_human_row else 9                          # Q-S2: k*-th row of the frame
    assert entry["pair_idx"].tolist() == [[0, 1], [0, 2], [0, 3], [4, 5], [4, 6], [human2, 7], [human2, 8]]
    assert entry["im_idx"].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert entry["attention_gt"] == [[0], [1], [2], [0], [1], [2], [0]]
    assert entry["contacting_gt"] == [[2], [3, 4], [6], [7], [8], [9], [10]]
    assert entry["distribution"].shape == (11, 36)
    pairs = entry["pair_idx"]
    expected_union = union_boxes(entry["boxes"][:, 1:], pairs, entry["im_idx"])
    expected_union[:, 1:] *= 2.0
    torch.testing.assert_close(entry["union_feat"], detector.roi_align(det["fmaps"], expected_union))
    pair_boxes = torch.cat([entry["boxes"][pairs[:, 0], 1:], entry["boxes"][pairs[:, 1], 1:]], 1)
    assert torch.equal(entry["spatial_masks"], spatial_masks(pair_boxes))


# --- entries from images ---------------------------------------------------------------------
SPEC_KEYS = {
    ("predcls", True): {"boxes", "labels", "scores", "im_idx", "pair_idx", "human_idx", "features", "union_feat",
                        "union_box", "spatial_masks", "attention_gt", "spatial_gt", "contacting_gt"},
    ("sgcls", True): {"boxes", "labels", "scores", "distribution", "pred_labels", "im_idx", "pair_idx", "human_idx",
                      "features", "union_feat", "union_box", "spatial_masks", "attention_gt", "spatial_gt",
                      "contacting_gt"},
    ("sgcls", False): {"boxes", "labels", "scores", "distribution", "pred_labels", "im_idx", "pair_idx", "human_idx",
                       "features", "attention_gt", "spatial_gt", "contacting_gt", "fmaps", "im_info"},
    ("sgdet", True): {"boxes", "labels", "scores", "distribution", "im_idx", "pair_idx", "features", "union_feat",
                      "spatial_masks", "attention_gt", "spatial_gt", "contacting_gt"},
    ("sgdet", False): {"boxes", "scores", "distribution", "pred_labels", "features", "fmaps", "im_info"},
}
DTYPES = {"boxes": torch.float32, "labels": torch.int64, "scores": torch.float32, "distribution": torch.float32,
          "pred_labels": torch.int64, "im_idx": torch.float32, "pair_idx": torch.int64, "human_idx": torch.int64,
          "features": torch.float32, "union_feat": torch.float32, "union_box": torch.float32,
          "spatial_masks": torch.float32, "fmaps": torch.float32, "im_info": torch.float32}


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(7)
    frames = [torch.from_numpy(rng.integers(0, 256, size=(3, FRAME_H, FRAME_W), dtype=np.uint8)) for _ in range(3)]
    images, im_info = frames_to_blob(frames, target_size=FRAME_H)
    return images, im_info, random_video_gt([f"V.mp4/{t:06d}.png" for t in range(3)], rng)


@pytest.fixture(scope="module")
def entries(video):
    images, im_info, gt = video
    detector = small_detector()
    return {key: build_entry(detector, images, im_info, gt, *key) for key in SPEC_KEYS}


@pytest.mark.parametrize("key", list(SPEC_KEYS))
def test_entry_fields_shapes_dtypes(entries, video, key):
    entry = entries[key]
    assert set(entry) == SPEC_KEYS[key]
    n, t = entry["boxes"].shape[0], video[0].shape[0]
    for name, dtype in DTYPES.items():
        if name in entry:
            assert entry[name].dtype == dtype, name
    assert entry["boxes"].shape == (n, 5) and entry["features"].shape == (n, 2048)
    assert entry["scores"].shape == (n,)
    assert torch.all(entry["boxes"][1:, 0] >= entry["boxes"][:-1, 0]) and torch.all(entry["boxes"][:, 1:] >= 0)
    if "distribution" in entry:
        assert entry["distribution"].shape == (n, 36)
        torch.testing.assert_close(entry["distribution"].sum(1), torch.ones(n))
    if "pred_labels" in entry:
        assert torch.equal(entry["pred_labels"], entry["distribution"].argmax(1) + 1)
        assert torch.equal(entry["scores"], entry["distribution"].max(1).values)
    if "pair_idx" in entry:
        p = entry["pair_idx"].shape[0]
        assert entry["im_idx"].shape == (p,) and all(len(entry[f]) == p for f in ("attention_gt", "spatial_gt", "contacting_gt"))
        assert torch.equal(entry["boxes"][entry["pair_idx"][:, 0], 0], entry["im_idx"])
        assert torch.equal(entry["boxes"][entry["pair_idx"][:, 1], 0], entry["im_idx"])
    if "union_feat" in entry:
        p = entry["pair_idx"].shape[0]
        assert entry["union_feat"].shape == (p, 1024, 7, 7) and entry["spatial_masks"].shape == (p, 2, 27, 27)
    if "fmaps" in entry:
        assert entry["fmaps"].shape == (t, 1024, 3, 4) and entry["im_info"].shape == ()
    if "human_idx" in entry:
        assert entry["human_idx"].shape == (t, 1) and torch.all(entry["labels"][entry["human_idx"].view(-1)] == 1)


def test_gt_entry_values(entries, video):
    images, im_info, gt = video
    detector = small_detector()
    entry = entries[("predcls", True)]
    layout = gt_layout([parse_frame_gt(f) for f in gt])
    assert torch.equal(entry["boxes"], layout.boxes) and torch.equal(entry["labels"], layout.labels)
    assert torch.all(entry["scores"] == 1)
    with torch.no_grad():                                        # one pass over all frames (no chunks)
        fmaps = detector.base_features(images)
        torch.testing.assert_close(entry["features"], detector.roi_features(fmaps, layout.boxes), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(entry["union_feat"], detector.roi_align(fmaps, entry["union_box"]), atol=1e-4, rtol=1e-4)
    assert torch.equal(entry["union_box"], union_boxes(layout.boxes[:, 1:], layout.pair_idx, layout.im_idx))
    pair_boxes = torch.cat([layout.boxes[layout.pair_idx[:, 0], 1:], layout.boxes[layout.pair_idx[:, 1], 1:]], 1)
    assert torch.equal(entry["spatial_masks"], spatial_masks(pair_boxes))
    assert entry["attention_gt"] == layout.attention_gt
    sgcls = entries[("sgcls", False)]
    torch.testing.assert_close(sgcls["fmaps"], fmaps, atol=1e-4, rtol=1e-4)
    assert float(sgcls["im_info"]) == float(im_info[0, 2])
    assert torch.equal(entries[("sgcls", True)]["features"], entry["features"])


def test_sgdet_entries_cover_every_gt_object(entries, video):
    gt = video[2]
    train = entries[("sgdet", True)]
    objects = [(t, o["class"]) for t, frame in enumerate(gt) for o in frame[1:]]
    assert train["pair_idx"].shape[0] == len(objects)
    assert sorted((int(train["im_idx"][p]), a) for p, a in enumerate(train["attention_gt"])) == \
        sorted((t, o["attention_relationship"].tolist()) for t, frame in enumerate(gt) for o in frame[1:])
    test = entries[("sgdet", False)]
    assert test["boxes"].shape[0] > 0 and set(test["boxes"][:, 0].tolist()) <= {0.0, 1.0, 2.0}


def test_build_entry_rejects_bad_input(video):
    images, im_info, gt = video
    detector = small_detector()
    with pytest.raises(ValueError, match="mode"):
        build_entry(detector, images, im_info, gt, "detect", False)
    with pytest.raises(ValueError, match="gt_frames"):
        build_entry(detector, images, im_info, gt[:2], "predcls", False, video="X.mp4")
    with pytest.raises(ValueError, match="im_info"):
        build_entry(detector, images, im_info[:2], gt, "predcls", False)
    broken = [[{"frame": "x"}] + f[1:] for f in gt]
    with pytest.raises(ValueError, match="X.mp4 frame 0: element 0 must be the person"):
        build_entry(detector, images, im_info, broken, "predcls", False, video="X.mp4")
    two_people = [[{"person_bbox": np.zeros((2, 4), np.float32)}] + f[1:] for f in gt]
    with pytest.raises(ValueError, match="exactly one person box"):
        build_entry(detector, images, im_info, two_people, "sgcls", True)
