"""AG Faster R-CNN: published checkpoint format, caffe layout, anchors, RPN, NMS, detection selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fremure.data.detector import (AGFasterRCNN, CheckpointMismatchError, DetectorConfig, decode_boxes,
                                   generate_anchors, load_ag_detector, nms_plus1, our_key_to_published,
                                   published_key_to_ours, save_ag_detector)

from detector_fakes import small_detector


@pytest.fixture(scope="module")
def detector():
    return small_detector(seed=0)


def _iou_plus1(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
    return iw * ih / (area(a) + area(b) - iw * ih)


def _slow_nms(boxes, scores, threshold) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        if all(_iou_plus1(boxes[i].tolist(), boxes[k].tolist()) <= threshold for k in keep):
            keep.append(i)
    return keep


# --- checkpoint ------------------------------------------------------------------------------
def test_published_checkpoint_round_trip(detector, tmp_path):
    path = tmp_path / "faster_rcnn_ag.pth"
    save_ag_detector(detector, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"model"}
    published = raw["model"]
    for key, shape in [("RCNN_base.0.weight", (64, 3, 7, 7)), ("RCNN_base.6.22.conv3.weight", (1024, 256, 1, 1)),
                       ("RCNN_top.0.0.downsample.0.weight", (2048, 1024, 1, 1)),
                       ("RCNN_rpn.RPN_cls_score.weight", (24, 512, 1, 1)), ("RCNN_rpn.RPN_bbox_pred.bias", (48,)),
                       ("RCNN_cls_score.weight", (37, 2048)), ("RCNN_bbox_pred.weight", (148, 2048))]:
        assert tuple(published[key].shape) == shape, key
    assert "RCNN_base.1.num_batches_tracked" in published
    loaded = load_ag_detector(path, config=detector.config)
    ours, theirs = detector.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    # A bare published state dict with a DataParallel "module." prefix loads too.
    with torch.device("meta"):
        bare = AGFasterRCNN()
    bare.load_published_state_dict({f"module.{k}": v for k, v in published.items()})
    assert torch.equal(bare.cls_score.weight, detector.cls_score.weight)


def test_mismatched_checkpoint_lists_every_bad_key(detector, tmp_path):
    published = detector.published_state_dict()
    del published["RCNN_cls_score.bias"]
    published["RCNN_extra.weight"] = torch.zeros(3)
    published["RCNN_bbox_pred.weight"] = torch.zeros(4, 2048)
    torch.save({"model": published}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        load_ag_detector(tmp_path / "bad.pth")
    message = str(err.value)
    assert "bad.pth" in message
    assert "missing keys (1): RCNN_cls_score.bias" in message
    assert "unexpected keys (1): RCNN_extra.weight" in message
    assert "RCNN_bbox_pred.weight (checkpoint (4, 2048), model (148, 2048))" in message


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_ag_detector(tmp_path / "nothere.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth"):
        load_ag_detector(tmp_path / "list.pth")


def test_key_mapping_is_explicit_and_invertible(detector):
    assert published_key_to_ours("RCNN_base.5.3.bn2.running_var") == "backbone.layer2.3.bn2.running_var"
    assert published_key_to_ours("RCNN_top.0.2.conv3.weight") == "res5.2.conv3.weight"
    assert published_key_to_ours("RCNN_rpn.RPN_Conv.bias") == "rpn.conv.bias"
    assert published_key_to_ours("RCNN_roi_align.foo") is None
    for key in detector.state_dict():
        assert published_key_to_ours(our_key_to_published(key)) == key


def test_caffe_layout_and_frozen(detector):
    with torch.device("meta"):
        model = AGFasterRCNN()
        fmaps = model.base_features(torch.empty(1, 3, 600, 1067))
        pooled = model.head(torch.empty(5, 1024, 7, 7))
    assert fmaps.shape == (1, 1024, 38, 67)                      # docs/ag_and_eval.md 2.1: 38x67 for 600x1067
    assert pooled.shape == (5, 2048)
    for stage in (detector.backbone.layer2, detector.backbone.layer3, detector.res5):
        assert stage[0].conv1.stride == (2, 2) and stage[0].conv2.stride == (1, 1)
    detector.train()
    assert not detector.training and not any(m.training for m in detector.modules())
    assert not any(p.requires_grad for p in detector.parameters())


def test_fingerprint_tracks_weights_and_settings(detector):
    fp = detector.fingerprint()
    config = detector.config
    try:
        with torch.no_grad():
            detector.bbox_pred.bias[3] += 1
        assert detector.fingerprint() != fp
        with torch.no_grad():
            detector.bbox_pred.bias[3] -= 1
        detector.config = DetectorConfig(target_size=50)
        assert detector.fingerprint() != fp
    finally:
        detector.config = config
    assert detector.fingerprint() == fp


# --- geometry --------------------------------------------------------------------------------
def test_anchors_match_the_original_faster_rcnn_table():
    # py-faster-rcnn generate_anchors() with its default scales (8, 16, 32)
    expected = torch.tensor([[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                             [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                             [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]], dtype=torch.float32)
    assert torch.equal(generate_anchors(scales=(8, 16, 32)), expected)
    assert generate_anchors().shape == (12, 4)


def test_decode_boxes_uses_plus_one_widths():
    box = torch.tensor([[10.0, 20.0, 29.0, 59.0]])             # w = 20, h = 40
    zero = decode_boxes(box, torch.zeros(1, 1, 4))
    assert torch.equal(zero, torch.tensor([[[10.0, 20.0, 30.0, 60.0]]]))   # x2 + 1: no -1 on decode
    moved = decode_boxes(box, torch.tensor([[[0.5, -0.25, float(np.log(2.0)), 0.0]]]))
    assert torch.allclose(moved, torch.tensor([[[10.0, 10.0, 50.0, 50.0]]]), atol=1e-5)


def test_nms_plus1_matches_greedy_loop():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(60, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 3 + torch.rand(60, 2, generator=g) * 20], 1)
    scores = torch.rand(60, generator=g)
    groups = torch.randint(0, 3, (60,), generator=g)
    keep = nms_plus1(boxes, scores, groups, 0.4).tolist()
    expected = []
    for grp in range(3):
        idx = (groups == grp).nonzero().view(-1)
        expected += [int(idx[k]) for k in _slow_nms(boxes[idx], scores[idx], 0.4)]
    assert sorted(keep) == sorted(expected)
    assert scores[keep].tolist() == sorted(scores[keep].tolist(), reverse=True)


# --- RPN -------------------------------------------------------------------------------------
def _slow_proposals(rpn, fmaps, im_info, config):
    """The reference proposal layer, step by step (reshape-softmax, anchor shifts, loops)."""
    hidden = F.relu(rpn.conv(fmaps))
    logits = rpn.objectness(hidden)
    b, c, h, w = logits.shape
    prob = F.softmax(logits.view(b, 2, c // 2 * h, w), 1).view(b, c, h, w)[:, c // 2:]
    deltas = rpn.deltas(hidden)
    anchors = generate_anchors()
    out = torch.zeros(b, config.rpn_post_nms_top_n, 5)
    for i in range(b):
        boxes, scores = [], []
        for y in range(h):
            for x in range(w):
                for a in range(anchors.shape[0]):
                    anchor = anchors[a] + torch.tensor([16.0 * x, 16.0 * y, 16.0 * x, 16.0 * y])
                    d = deltas[i, 4 * a:4 * a + 4, y, x]
                    box = decode_boxes(anchor, d.view(1, 4))[0]
                    box[0::2] = box[0::2].clamp(0, float(im_info[i, 1]) - 1)
                    box[1::2] = box[1::2].clamp(0, float(im_info[i, 0]) - 1)
                    boxes.append(box)
                    scores.append(float(prob[i, a, y, x]))
        boxes = torch.stack(boxes)
        order = sorted(range(len(scores)), key=lambda k: -scores[k])[: config.rpn_pre_nms_top_n]
        keep = _slow_nms(boxes[order], [scores[k] for k in order], config.rpn_nms_thresh)
        keep = [order[k] for k in keep][: config.rpn_post_nms_top_n]
        out[i, :, 0] = i
        out[i, : len(keep), 1:] = boxes[keep]
    return out


def test_rpn_matches_reference_proposal_layer(detector):
    config = DetectorConfig(rpn_post_nms_top_n=200, rpn_pre_nms_top_n=100)
    g = torch.Generator().manual_seed(0)
    fmaps = torch.randn(2, 1024, 2, 3, generator=g)
    im_info = torch.tensor([[40.0, 60.0, 1.0], [40.0, 60.0, 1.0]])
    with torch.no_grad():
        rois = detector.rpn(fmaps, im_info, config)
        expected = _slow_proposals(detector.rpn, fmaps, im_info, config)
    assert rois.shape == (2, 200, 5)
    torch.testing.assert_close(rois, expected, atol=1e-4, rtol=1e-5)
    assert torch.all(rois[:, -1, 1:] == 0)                       # fewer than 200 survive: zero padding (Q-S5)


# --- detection selection ---------------------------------------------------------------------
def _slow_select(det, im_info, config, offset):
    prob = det["cls_prob"].numpy()
    b, r, c = prob.shape
    deltas = det["bbox_pred"].view(b, r, c, 4) * torch.tensor([0.1, 0.1, 0.2, 0.2])
    boxes = decode_boxes(det["rois"][:, :, 1:5], deltas)
    boxes[0, ..., 0::2] = boxes[0, ..., 0::2].clamp(0, float(im_info[0, 1]) - 1)   # frame 0 of the chunk only
    boxes[0, ..., 1::2] = boxes[0, ..., 1::2].clamp(0, float(im_info[0, 0]) - 1)
    boxes = boxes / im_info[0, 2]
    rows = []
    for i in range(b):
        for j in range(1, c):
            inds = [k for k in range(r) if prob[i, k, j] > config.score_thresh]
            if not inds:
                continue
            inds.sort(key=lambda k: -prob[i, k, j])
            keep = [inds[k] for k in _slow_nms(boxes[i, inds, j], prob[i, inds, j], config.class_nms_thresh)]
            for k in keep[:1] if j == 1 else keep:
                rows.append((i + offset, *boxes[i, k, j].tolist(), j, float(prob[i, k, j]), k))
    return rows


def test_select_detections_matches_per_class_loop(detector):
    g = torch.Generator().manual_seed(5)
    b, r, c = 3, 30, 37
    xy = torch.rand(b, r, 2, generator=g) * 50
    rois = torch.cat([torch.zeros(b, r, 1), xy, xy + 5 + torch.rand(b, r, 2, generator=g) * 30], 2)
    logits = torch.randn(b, r, c, generator=g) * 2
    logits[..., [1, 4, 9]] += 2.5
    det = {"rois": rois, "cls_prob": logits.softmax(-1), "bbox_pred": torch.randn(b, r, 4 * c, generator=g) * 3,
           "features": torch.randn(b, r, 2048, generator=g)}
    im_info = torch.tensor([[60.0, 80.0, 2.0]]).repeat(b, 1)
    out = detector.select_detections(det, im_info, frame_offset=4)
    expected = _slow_select(det, im_info, detector.config, offset=4)
    assert len(expected) > 20
    assert out["boxes"].shape == (len(expected), 5) and out["features"].shape == (len(expected), 2048)
    torch.testing.assert_close(out["boxes"], torch.tensor([e[:5] for e in expected]), atol=1e-4, rtol=1e-6)
    assert out["labels"].tolist() == [e[5] for e in expected]
    torch.testing.assert_close(out["scores"], torch.tensor([e[6] for e in expected]))
    proposals = torch.tensor([e[7] for e in expected])
    assert torch.equal(out["features"], det["features"][out["boxes"][:, 0].long() - 4, proposals])
    # Q-S1: only the first frame of the chunk is clipped to the image.
    assert out["boxes"][out["boxes"][:, 0] == 4, 3].max() <= (80 - 1) / 2
    assert out["boxes"][out["boxes"][:, 0] > 4, 3].max() > (80 - 1) / 2


def test_detect_shapes(detector):
    images = torch.randn(2, 3, 48, 64) * 40
    im_info = torch.tensor([[48.0, 64.0, 1.0]] * 2)
    with torch.no_grad():
        out = detector.detect(images, im_info)
    assert out["rois"].shape == (2, 4, 5) and out["cls_prob"].shape == (2, 4, 37)
    assert out["bbox_pred"].shape == (2, 4, 148) and out["features"].shape == (2, 4, 2048)
    assert out["fmaps"].shape == (2, 1024, 3, 4)
    torch.testing.assert_close(out["cls_prob"].sum(-1), torch.ones(2, 4))


def test_folded_batchnorm_gives_the_same_features(detector, tmp_path):
    import copy

    folded = copy.deepcopy(detector).fold_batchnorm_()
    assert folded.folded and not detector.folded
    images = torch.randn(1, 3, 48, 64) * 40
    rois = torch.tensor([[0.0, 3, 4, 40, 30], [0, 10, 0, 63, 47]])
    with torch.no_grad():
        fmaps, fmaps_folded = detector.base_features(images), folded.base_features(images)
        torch.testing.assert_close(fmaps_folded, fmaps, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(folded.roi_features(fmaps, rois), detector.roi_features(fmaps, rois),
                                   atol=1e-4, rtol=1e-4)
    assert folded.fingerprint() != detector.fingerprint()
    with pytest.raises(ValueError, match="folded"):
        folded.published_state_dict()


def test_padding_proposals_and_clip_flags(detector):
    rois = torch.zeros(2, 3, 5)
    rois[:, 0, 1:] = torch.tensor([5.0, 5, 70, 40])                # one real proposal, two zero paddings
    cls_prob = torch.full((2, 3, 37), 0.02)
    cls_prob[:, :, [1, 5]] = 0.33
    cls_prob[:, 0, [1, 5]] = 0.4                                  # the real proposal scores highest
    det = {"rois": rois, "cls_prob": cls_prob, "bbox_pred": torch.zeros(2, 3, 148), "features": torch.randn(2, 3, 2048)}
    im_info = torch.tensor([[48.0, 64.0, 1.0]] * 2)
    config = detector.config
    try:
        kept = detector.select_detections(det, im_info)
        # per frame: best person, book from the real proposal, book from the (NMS-merged) zero paddings
        assert kept["labels"].tolist() == [1, 5, 5, 1, 5, 5]
        assert kept["boxes"][:, 3].tolist() == [63, 63, 1, 71, 71, 1]   # zero deltas decode to x2 + 1; Q-S1 clip
        detector.config = DetectorConfig(skip_padding_proposals=True, clip_all_frames=True)
        kept = detector.select_detections(det, im_info)
    finally:
        detector.config = config
    assert kept["labels"].tolist() == [1, 5, 1, 5] and torch.all(kept["boxes"][:, 3] == 63)
