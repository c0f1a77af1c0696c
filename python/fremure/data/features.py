"""Per-video ``entry`` dicts from the frozen AG detector (docs/ag_and_eval.md sections 2.2-2.6).

An entry holds the box table, labels/scores, the object class distribution, 2048-d RoI features,
human->object pairs with their frame index, union-box features, 27x27 two-channel spatial masks
and (with GT) the relation label lists. Which keys exist depends on the mode and on
training/test exactly as in the table of docs/ag_and_eval.md 2.6:

* predcls / sgcls (any phase): boxes and labels from the GT (2.2);
* sgdet test: detections (2.3); sgdet training: detections matched to the GT at IoU 0.5 plus the
  unmatched GT boxes ("SUPPLY", 2.4).

Coordinates: ``boxes`` are original-image pixels; ``union_box`` is in blob ("scaled") pixels
(docs/ag_and_eval.md Q-S9); spatial masks are drawn from original-pixel boxes (they are scale-invariant).

Dataset protocol (anything with these attributes works): ``data_path`` (frames are read from
``<data_path>/frames/<VIDEO>.mp4/<FRAME>.png``, or from ``frames_path`` when the object has one),
``video_list`` (per video, the frame keys ``'VIDEO.mp4/FRAME.png'``) and ``gt_annotations``
(per video, per frame ``[person dict, object dicts...]`` in the docs/ag_and_eval.md 1.8 format).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .geometry import box_iou_plus1, spatial_masks, union_boxes  # noqa: F401 (re-exported)
from .images import load_video_blob

if TYPE_CHECKING:  # the detector module needs torchvision; reading entries must not
    from .detector import AGFasterRCNN

MODES = ("predcls", "sgcls", "sgdet")
GT_LIST_FIELDS = ("attention_gt", "spatial_gt", "contacting_gt")


# ------------------------------------------------------------------ ground truth of one video
@dataclasses.dataclass
class FrameGT:
    """GT of one frame: person box, object boxes ``[K,4]`` (float64), classes and relation lists."""

    person: np.ndarray
    boxes: np.ndarray
    classes: list[int]
    attention: list[list[int]]
    spatial: list[list[int]]
    contacting: list[list[int]]


def _int_list(value: Any, where: str) -> list[int]:
    if value is None:
        raise ValueError(f"{where}: relation list is None")
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def parse_frame_gt(frame: Sequence[dict], where: str = "frame") -> FrameGT:
    """Validate one docs/ag_and_eval.md 1.8 frame record ``[person dict, object dicts...]`` and convert it."""
    if len(frame) == 0 or "person_bbox" not in frame[0]:
        raise ValueError(f"{where}: element 0 must be the person dict with 'person_bbox'")
    person = np.asarray(frame[0]["person_bbox"], dtype=np.float64).reshape(-1, 4)
    if person.shape[0] != 1:
        raise ValueError(f"{where}: expected exactly one person box, got {person.shape[0]} (docs/ag_and_eval.md Q-D3)")
    boxes, classes, att, spa, con = [], [], [], [], []
    for k, obj in enumerate(frame[1:], start=1):
        if "class" not in obj or "bbox" not in obj:
            raise ValueError(f"{where}: element {k} lacks 'class'/'bbox'")
        box = np.asarray(obj["bbox"], dtype=np.float64).reshape(-1)
        if box.shape != (4,):
            raise ValueError(f"{where}: element {k} bbox must have 4 numbers, got {box.shape}")
        boxes.append(box)
        classes.append(int(obj["class"]))
        att.append(_int_list(obj.get("attention_relationship"), f"{where} element {k} attention"))
        spa.append(_int_list(obj.get("spatial_relationship"), f"{where} element {k} spatial"))
        con.append(_int_list(obj.get("contacting_relationship"), f"{where} element {k} contacting"))
    return FrameGT(person[0], np.array(boxes, dtype=np.float64).reshape(-1, 4), classes, att, spa, con)


@dataclasses.dataclass
class GTLayout:
    """The GT box table of one video (docs/ag_and_eval.md 2.2), on CPU.

    ``boxes [N,5]`` float32 (frame, xyxy original px), ``labels [N]`` int64 (person = 1, first row
    of its frame), ``human_idx [T,1]`` int64, ``pair_idx [P,2]`` int64 (person row, object row),
    ``im_idx [P]`` float32, and the per-pair relation lists.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    human_idx: torch.Tensor
    pair_idx: torch.Tensor
    im_idx: torch.Tensor
    attention_gt: list[list[int]]
    spatial_gt: list[list[int]]
    contacting_gt: list[list[int]]


def gt_layout(frames: Sequence[FrameGT]) -> GTLayout:
    """Lay the GT of a video out as rows frame by frame, person first (docs/ag_and_eval.md 2.2)."""
    counts = torch.tensor([1 + len(f.classes) for f in frames], dtype=torch.int64)
    starts = torch.cumsum(counts, 0) - counts
    frame_of_row = torch.repeat_interleave(torch.arange(len(frames)), counts)
    coords = np.concatenate([np.concatenate([f.person[None], f.boxes]) for f in frames]) if frames else np.zeros((0, 4))
    boxes = torch.cat([frame_of_row.to(torch.float32)[:, None], torch.from_numpy(coords).to(torch.float32)], 1)
    labels = torch.tensor([c for f in frames for c in [1, *f.classes]], dtype=torch.int64)
    obj_counts = counts - 1
    im_idx = torch.repeat_interleave(torch.arange(len(frames)), obj_counts)
    subject = starts[im_idx]
    within = torch.arange(int(obj_counts.sum())) - torch.repeat_interleave(torch.cumsum(obj_counts, 0) - obj_counts, obj_counts)
    pair_idx = torch.stack([subject, subject + 1 + within], 1)
    return GTLayout(boxes, labels, starts.view(-1, 1).clone(), pair_idx, im_idx.to(torch.float32),
                    [r for f in frames for r in f.attention], [r for f in frames for r in f.spatial],
                    [r for f in frames for r in f.contacting])


# ------------------------------------------------ sgdet training: matching detections to GT (docs/ag_and_eval.md 2.4)
@dataclasses.dataclass
class FrameMatch:
    """Matching result of one frame.

    ``found[m]`` is the frame-local detection row matched to GT element ``gt_order[m]``
    (0 = person, k = k-th object); ``supply`` lists the GT elements no detection matched.
    """

    found: list[int]
    gt_order: list[int]
    supply: list[int]


def match_detections(det_boxes: torch.Tensor, frames: Sequence[FrameGT],
                     threshold: float = 0.5) -> tuple[list[FrameMatch], torch.Tensor]:
    """Greedy per-GT matching of one video's detections (docs/ag_and_eval.md 2.4, reference ``assign_relations``).

    ``det_boxes [N,5]`` (frame, xyxy original px; rows sorted by frame). Returns per-frame
    matches and ``assigned_labels [N]`` int64 (0 = background). Reference quirks kept (Q-S3):
    a GT object whose best detection is taken falls back to the next detection in descending-IoU
    order without re-checking the threshold (ties: lower index first), and reuses the taken one
    when none is left.
    """
    det_boxes = det_boxes.detach().cpu()
    frame_col = det_boxes[:, 0].to(torch.int64)
    bounds = torch.searchsorted(frame_col, torch.arange(len(frames) + 1)).tolist()
    assigned = torch.zeros(det_boxes.shape[0], dtype=torch.int64)
    matches = []
    for i, frame in enumerate(frames):
        lo, hi = bounds[i], bounds[i + 1]
        gt_boxes = torch.from_numpy(np.concatenate([frame.person[None], frame.boxes]))
        gt_labels = torch.tensor([1, *frame.classes], dtype=torch.int64)
        iou = box_iou_plus1(det_boxes[lo:hi, 1:], gt_boxes)                # [n, G] float64
        if hi > lo:
            best, arg = iou.max(1)
            hit = best > threshold
            assigned[lo:hi][hit] = gt_labels[arg[hit]]
        found, gt_order, supply, taken = [], [], [], set()
        for g in range(gt_boxes.shape[0]):
            column = iou[:, g]
            if hi == lo or not bool((column > threshold).any()):
                supply.append(g)
                continue
            choice = int(column.argmax())
            if g > 0 and choice in taken:
                for d in torch.sort(-column, stable=True).indices.tolist():
                    if d not in taken:
                        choice = d
                        break
            found.append(choice)
            gt_order.append(g)
            taken.add(choice)
            if g > 0:
                assigned[lo + choice] = gt_labels[g]
        matches.append(FrameMatch(found, gt_order, supply))
    return matches, assigned


# ------------------------------------------------------------------ entry builder
def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _slice_bounds(sorted_frames: torch.Tensor, start: int, stop: int) -> tuple[int, int]:
    bounds = torch.searchsorted(sorted_frames.contiguous(), torch.tensor([start, stop], dtype=sorted_frames.dtype,
                                                                         device=sorted_frames.device))
    return int(bounds[0]), int(bounds[1])


def _relation_lists(frames: Sequence[FrameGT], picks: list[tuple[int, int]]) -> dict[str, list[list[int]]]:
    """Relation lists of the GT objects ``(frame, object number >= 1)`` in ``picks`` order."""
    return {"attention_gt": [list(frames[i].attention[g - 1]) for i, g in picks],
            "spatial_gt": [list(frames[i].spatial[g - 1]) for i, g in picks],
            "contacting_gt": [list(frames[i].contacting[g - 1]) for i, g in picks]}


def _gt_entry(detector: AGFasterRCNN, images: torch.Tensor, im_info: torch.Tensor,
              frames: Sequence[FrameGT], mode: str, training: bool) -> dict[str, Any]:
    device = images.device
    layout = gt_layout(frames)
    scale = im_info[0, 2]
    scaled = layout.boxes.to(device)
    scaled[:, 1:] = scaled[:, 1:] * scale
    pair_idx, im_idx = layout.pair_idx.to(device), layout.im_idx.to(device)
    with_union = mode == "predcls" or training
    keep_fmaps = not with_union
    union = union_boxes(scaled[:, 1:], pair_idx, im_idx) if with_union else None
    features = scaled.new_empty(scaled.shape[0], 2048)
    union_feat = scaled.new_empty(pair_idx.shape[0], 1024, 7, 7) if with_union else None
    fmaps = []
    for start, stop in _chunks(images.shape[0], detector.config.chunk_size):
        chunk_maps = detector.base_features(images[start:stop])
        r0, r1 = _slice_bounds(scaled[:, 0], start, stop)
        rois = scaled[r0:r1].clone()
        rois[:, 0] -= start
        features[r0:r1] = detector.roi_features(chunk_maps, rois)
        if with_union:
            p0, p1 = _slice_bounds(im_idx, start, stop)
            rois = union[p0:p1].clone()
            rois[:, 0] -= start
            union_feat[p0:p1] = detector.roi_align(chunk_maps, rois)
        if keep_fmaps:
            fmaps.append(chunk_maps)
    boxes = scaled.clone()
    boxes[:, 1:] = scaled[:, 1:] / scale
    entry: dict[str, Any] = {"boxes": boxes, "labels": layout.labels.to(device),
                             "scores": torch.ones(boxes.shape[0], device=device)}
    if mode == "sgcls":
        entry["distribution"] = detector.class_distribution(features)
        entry["scores"], pred = entry["distribution"].max(1)
        entry["pred_labels"] = pred + 1
    entry.update(im_idx=im_idx, pair_idx=pair_idx, human_idx=layout.human_idx.to(device), features=features)
    if with_union:
        entry["union_feat"] = union_feat
        entry["union_box"] = union
        entry["spatial_masks"] = spatial_masks(torch.cat([boxes[pair_idx[:, 0], 1:], boxes[pair_idx[:, 1], 1:]], 1))
    else:
        entry["fmaps"] = torch.cat(fmaps)
        entry["im_info"] = scale.clone()
    entry.update(attention_gt=layout.attention_gt, spatial_gt=layout.spatial_gt, contacting_gt=layout.contacting_gt)
    return entry


def _detect_video(detector: AGFasterRCNN, images: torch.Tensor, im_info: torch.Tensor) -> dict[str, torch.Tensor]:
    rows, fmaps = [], []
    for start, stop in _chunks(images.shape[0], detector.config.chunk_size):
        out = detector.detect(images[start:stop], im_info[start:stop])
        rows.append(detector.select_detections(out, im_info[start:stop], frame_offset=start))
        fmaps.append(out["fmaps"])
    merged = {key: torch.cat([r[key] for r in rows]) for key in rows[0]}
    merged["boxes"] = merged["boxes"].clamp(min=0)
    merged["fmaps"] = torch.cat(fmaps)
    return merged


def _sgdet_train_entry(detector: AGFasterRCNN, det: dict[str, torch.Tensor], im_info: torch.Tensor,
                       frames: Sequence[FrameGT], fix_human_row: bool) -> dict[str, Any]:
    device = det["boxes"].device
    scale = im_info[0, 2]
    matches, assigned = match_detections(det["boxes"], frames)
    det_frame = det["boxes"][:, 0].to(torch.int64).cpu()
    det_counts = torch.bincount(det_frame, minlength=len(frames))
    # SUPPLY: unmatched GT boxes become rows with score 1, features from the GT box.
    # Scaled like the reference: float32 product for the (float32) person box, float64 product
    # rounded once to float32 for the (float64) object boxes.
    scale32 = np.float32(scale.item())
    sup_frame, sup_coords, sup_labels = [], [], []
    for i, match in enumerate(matches):
        for g in match.supply:
            sup_frame.append(i)
            if g == 0:
                sup_coords.append(frames[i].person.astype(np.float32) * scale32)
            else:
                sup_coords.append((frames[i].boxes[g - 1] * np.float64(scale32)).astype(np.float32))
            sup_labels.append(1 if g == 0 else frames[i].classes[g - 1])
    sup_scaled = torch.zeros(len(sup_frame), 5, device=device)
    if sup_frame:
        sup_scaled[:, 0] = torch.tensor(sup_frame, dtype=torch.float32, device=device)
        sup_scaled[:, 1:] = torch.from_numpy(np.stack(sup_coords)).to(device)
    sup_features = detector.roi_features(det["fmaps"], sup_scaled)
    sup_boxes = sup_scaled.clone()
    sup_boxes[:, 1:] = sup_scaled[:, 1:] / scale
    sup_counts = torch.bincount(torch.tensor(sup_frame, dtype=torch.int64), minlength=len(frames))
    # Rows of frame i: its detections, then its supplied GT boxes.
    is_supply = torch.cat([torch.zeros(det_frame.shape[0], dtype=torch.int64),
                           torch.ones(len(sup_frame), dtype=torch.int64)])
    frame_all = torch.cat([det_frame, torch.tensor(sup_frame, dtype=torch.int64)])
    order = torch.sort(frame_all * 2 + is_supply, stable=True).indices.to(device)
    boxes = torch.cat([det["boxes"], sup_boxes])[order]
    labels = torch.cat([assigned.to(device), torch.tensor(sup_labels, dtype=torch.int64, device=device)])[order]
    scores = torch.cat([det["scores"], torch.ones(len(sup_frame), device=device)])[order]
    features = torch.cat([det["features"], sup_features])[order]
    frame_start = (torch.cumsum(det_counts + sup_counts, 0) - det_counts - sup_counts).tolist()
    det_counts = det_counts.tolist()
    pairs, im_idx, picks = [], [], []
    human_k = 0  # the reference carries its person position over between frames
    for i, match in enumerate(matches):
        found = match.found + [det_counts[i] + k for k in range(len(match.supply))]
        gt_order = match.gt_order + match.supply
        human_k = gt_order.index(0) if 0 in gt_order else human_k
        human_local = found[human_k] if fix_human_row else human_k
        frame_rows = det_counts[i] + len(match.supply)
        if human_local >= frame_rows:   # the reference would raise IndexError here
            human_local = found[human_k]
        for local, g in zip(found, gt_order):
            if g > 0:
                pairs.append([frame_start[i] + human_local, frame_start[i] + local])
                im_idx.append(i)
                picks.append((i, g))
    pair_idx = torch.tensor(pairs, dtype=torch.int64, device=device).view(-1, 2)
    im_idx_t = torch.tensor(im_idx, dtype=torch.float32, device=device)
    union = union_boxes(boxes[:, 1:], pair_idx, im_idx_t)
    union[:, 1:] = union[:, 1:] * scale
    entry = {"boxes": boxes, "labels": labels, "scores": scores,
             "distribution": detector.class_distribution(features),
             "im_idx": im_idx_t, "pair_idx": pair_idx, "features": features,
             "union_feat": detector.roi_align(det["fmaps"], union),
             "spatial_masks": spatial_masks(torch.cat([boxes[pair_idx[:, 0], 1:], boxes[pair_idx[:, 1], 1:]], 1))}
    entry.update(_relation_lists(frames, picks))
    return entry


def build_entry(detector: AGFasterRCNN, images: torch.Tensor, im_info: torch.Tensor,
                gt_frames: Sequence[Sequence[dict]] | None, mode: str, training: bool,
                fix_human_row: bool = False, video: str = "video") -> dict[str, Any]:
    """Run the frozen detector on one video and build its entry (docs/ag_and_eval.md 2.6).

    ``images`` float32 ``[T,3,H,W]`` and ``im_info [T,3]`` from :func:`fremure.data.images.frames_to_blob`;
    ``gt_frames`` the video's docs/ag_and_eval.md 1.8 annotation (T frames; required except for sgdet test).
    Frames go through the backbone ``detector.config.chunk_size`` at a time. Runs under
    ``torch.no_grad``; tensors are returned on the detector's device.
    ``fix_human_row`` selects the matched/supplied person row in sgdet training instead of the
    reference's k*-th row of the frame (docs/ag_and_eval.md Q-S2).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"{video}: images must be [T,3,H,W] with T >= 1, got {tuple(images.shape)}")
    if im_info.shape != (images.shape[0], 3):
        raise ValueError(f"{video}: im_info must be [T,3] = {(images.shape[0], 3)}, got {tuple(im_info.shape)}")
    need_gt = mode != "sgdet" or training
    frames = None
    if need_gt:
        if gt_frames is None or len(gt_frames) != images.shape[0]:
            raise ValueError(f"{video}: gt_frames must list the {images.shape[0]} frames, "
                             f"got {None if gt_frames is None else len(gt_frames)}")
        frames = [parse_frame_gt(f, f"{video} frame {t}") for t, f in enumerate(gt_frames)]
    device = detector.device
    images = images.to(device=device, dtype=torch.float32)
    im_info = im_info.to(device=device, dtype=torch.float32)
    with torch.no_grad():
        if mode != "sgdet":
            return _gt_entry(detector, images, im_info, frames, mode, training)
        det = _detect_video(detector, images, im_info)
        if training:
            return _sgdet_train_entry(detector, det, im_info, frames, fix_human_row)
        distribution = detector.class_distribution(det["features"])
        scores, pred = distribution.max(1)
        return {"boxes": det["boxes"], "scores": scores, "distribution": distribution,
                "pred_labels": pred + 1, "features": det["features"], "fmaps": det["fmaps"],
                "im_info": im_info[0, 2].clone()}


# ------------------------------------------------------------------ dataset access
def check_dataset(dataset: Any) -> None:
    """Raise TypeError/ValueError unless ``dataset`` has data_path, video_list and gt_annotations of equal length."""
    for name in ("data_path", "video_list", "gt_annotations"):
        if not hasattr(dataset, name):
            raise TypeError(f"dataset must have a {name!r} attribute ({type(dataset).__name__} has none)")
    if len(dataset.video_list) != len(dataset.gt_annotations):
        raise ValueError(f"dataset.video_list ({len(dataset.video_list)}) and dataset.gt_annotations "
                         f"({len(dataset.gt_annotations)}) differ in length")


def video_name(dataset: Any, index: int) -> str:
    """Name of video ``index``: the directory part of its first frame key, e.g. ``'001YG.mp4'``."""
    frames = dataset.video_list[index]
    if len(frames) == 0:
        raise ValueError(f"video {index} has no frames")
    return str(frames[0]).split("/")[0]


def video_frame_paths(dataset: Any, index: int) -> list[str]:
    """Image paths of video ``index``: ``<frames_path or data_path/frames>/<frame key>``."""
    root = getattr(dataset, "frames_path", None) or os.path.join(os.fspath(dataset.data_path), "frames")
    return [os.path.join(root, key) for key in dataset.video_list[index]]


def load_video_images(dataset: Any, index: int, detector: AGFasterRCNN) -> tuple[torch.Tensor, torch.Tensor]:
    """Blob ``[T,3,H,W]`` and ``im_info [T,3]`` of video ``index`` with the detector's resize settings."""
    config = detector.config
    return load_video_blob(video_frame_paths(dataset, index), config.target_size, config.max_size)


def video_entry(dataset: Any, index: int, detector: AGFasterRCNN, mode: str, training: bool,
                fix_human_row: bool = False) -> dict[str, Any]:
    """Read video ``index`` of ``dataset`` from disk and build its entry with ``detector``."""
    images, im_info = load_video_images(dataset, index, detector)
    return build_entry(detector, images, im_info, dataset.gt_annotations[index], mode, training,
                       fix_human_row=fix_human_row, video=video_name(dataset, index))
