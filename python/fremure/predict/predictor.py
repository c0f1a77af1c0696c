"""Scene graphs of any video with a trained model: :class:`Predictor`.

The predictor runs exactly what ``fremure eval`` runs (the frozen AG detector's entry of
:func:`fremure.data.features.build_entry`, then the model in its test phase) on frames that come
from a video file, a list of images or a tensor instead of an AG folder, and turns the model's
per-pair distributions into ranked :class:`~fremure.predict.scene_graph.SceneGraph` s.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..eval.classes import PREDICATES
from ..relations import RELATION_TYPES
from .scene_graph import Relation, SceneGraph, SceneObject
from .video import FrameSelection, VideoFrame, read_frames

logger = logging.getLogger("fremure.predict")
RANDOM_DETECTOR_WARNING = ("fremure.Predictor: no detector checkpoint given, the AG detector has RANDOM weights: "
                           "its boxes, classes and features are noise, and so are the scene graphs")
CONSTRAINTS = ("no", "with")


class Predictor:
    """Scene graphs of videos with a trained model and the frozen AG detector.

    Args:
        model: a FReMuRe model (e.g. ``fremure.load_run(run).model``); it runs in its own task
            (``model.config.mode``): sgdet takes the detector's boxes; predcls / sgcls need the
            boxes given per frame (``boxes=`` of :meth:`__call__`).
        detector: :class:`fremure.data.detector.AGFasterRCNN` (``fremure.pipeline.make_detector``).
        object_classes: class names, background first (default: AG's 37).
        device: where both run ("cpu", "cuda", ...).
    Build one from a run with :meth:`from_run`.
    """

    def __init__(self, model: torch.nn.Module, detector: Any, object_classes: Sequence[str] | None = None,
                 device: str | torch.device = "cpu"):
        from ..data.ag import OBJECT_CLASSES
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.detector = detector.to(self.device).eval()
        self.mode = model.config.mode
        self.object_classes = list(object_classes) if object_classes else list(OBJECT_CLASSES)
        self.tracking = bool(getattr(model.config, "tracking", False))

    @classmethod
    def from_run(cls, run: str | os.PathLike, detector_checkpoint: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", mode: str | None = None, *, random_detector: bool = False,
                 data_path: str | os.PathLike | None = None, detector_options: Mapping[str, Any] | None = None
                 ) -> "Predictor":
        """A predictor from a run folder or checkpoint JSON (:func:`fremure.load_run`), run in task
        ``mode`` (default: the checkpoint's; another task's weights must fit, else CheckpointError
        names the options that differ). ``detector_checkpoint``: the published ``faster_rcnn_ag.pth``; without
        one, ``random_detector=True`` is required and a warning says the graphs are noise.
        ``detector_options``: ``target_size`` / ``proposals`` of :func:`fremure.pipeline.make_detector`."""
        from ..runs import load_run
        loaded = load_run(run, overrides={"mode": mode} if mode else None, data_path=data_path)
        return cls(loaded.model, _detector(detector_checkpoint, random_detector, device, detector_options),
                   loaded.object_classes, device)

    @classmethod
    def from_published(cls, checkpoint: str | os.PathLike, config: Any, frequencies: Mapping[str, torch.Tensor] | None,
                       detector_checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
                       random_detector: bool = False, detector_options: Mapping[str, Any] | None = None
                       ) -> "Predictor":
        """A predictor from a published FReMuRe ``.tar`` (:func:`fremure.runs.load_published`):
        ``config`` a :class:`fremure.ModelConfig` giving the task and memory settings the file does
        not record, ``frequencies`` its priors (``fremure.pipeline.frequencies``) or None."""
        from ..runs import load_published
        loaded = load_published(checkpoint, config, frequencies)
        return cls(loaded.model, _detector(detector_checkpoint, random_detector, device, detector_options),
                   loaded.object_classes, device)

    @torch.no_grad()
    def __call__(self, video: Any, *, boxes: Sequence[Sequence[Mapping[str, Any]]] | None = None,
                 selection: FrameSelection | None = None, top_k: int | None = 100, min_score: float = 0.0,
                 constraint: str = "no") -> list[SceneGraph]:
        """Scene graphs of one video, one per frame.

        Args:
            video: a video file path (decoded with PyAV at ``selection``, default 1 frame per
                second), :func:`~fremure.predict.video.read_frames`' frames, a list of frames (PIL
                images or uint8 ``[H, W, 3]`` RGB arrays) or a
                ``[T, 3, H, W]`` tensor (uint8 0..255, or float 0..1, RGB). All frames form one
                clip: the model relates them over time.
            boxes: per frame, the boxes for predcls / sgcls (see :func:`gt_frames_from_boxes`).
            top_k: relations kept per frame, best first (None: all); ``min_score``: drop relations
                scored below it; ``constraint``: "no" keeps every predicate of a pair, "with" the
                best of each relation type (the evaluator's constraints).
        """
        _check_options(top_k, min_score, constraint)
        frames, numbers, times = _frames(video, selection)
        entry = self._entry(frames, boxes)
        out = self.model(entry, phase="test")
        return self._graphs(out, frames, numbers, times, top_k, min_score, constraint)

    def entry(self, video: Any, boxes=None, selection: FrameSelection | None = None) -> dict[str, Any]:
        """The detector's entry of ``video`` (what the model takes), for inspection and tests."""
        frames, _, _ = _frames(video, selection)
        return self._entry(frames, boxes)

    def _entry(self, frames: list[torch.Tensor], boxes) -> dict[str, Any]:
        from ..data.features import build_entry
        from ..data.images import frames_to_blob
        config = self.detector.config
        blob, im_info = frames_to_blob(frames, config.target_size, config.max_size)
        if self.mode == "sgdet":
            if boxes is not None:
                raise ValueError("boxes: this model runs SGDet (detector boxes); boxes need a predcls or sgcls model")
            return build_entry(self.detector, blob, im_info, None, "sgdet", training=False)
        if boxes is None:
            raise ValueError(f"boxes: a {self.mode} model needs the boxes of every frame (or run it in sgdet)")
        gt = gt_frames_from_boxes(boxes, len(frames), self.object_classes, need_classes=self.mode == "predcls")
        return build_entry(self.detector, blob, im_info, gt, self.mode, training=False)

    def _graphs(self, out: dict[str, Any], frames, numbers, times, top_k, min_score, constraint) -> list[SceneGraph]:
        label_key, score_key = ("labels", "scores") if self.mode == "predcls" else ("pred_labels", "pred_scores")
        boxes = out["boxes"].float().cpu().numpy()
        labels = out[label_key].cpu().numpy().astype(np.int64)
        scores = out[score_key].float().cpu().numpy()
        pairs = out["pair_idx"].cpu().numpy().reshape(-1, 2)
        im_idx = out["im_idx"].cpu().numpy().astype(np.int64)
        dists = [out[f"{r.name}_distribution"].float().cpu().numpy() for r in RELATION_TYPES]
        graphs = []
        for t, frame in enumerate(frames):
            rows = np.flatnonzero(boxes[:, 0] == t)
            where = {int(row): k for k, row in enumerate(rows)}
            frame_boxes = clip_to_frame(boxes[rows, 1:5], int(frame.shape[2]), int(frame.shape[1]))
            objects = tuple(SceneObject(k, tuple(float(v) for v in frame_boxes[k]), int(labels[row]),
                                        self._name(int(labels[row])), float(scores[row]),
                                        int(labels[row]) if self.tracking else None)
                            for k, row in enumerate(rows))
            relations = _relations(np.flatnonzero(im_idx == t), pairs, where, scores, dists, constraint)
            relations = [r for r in relations if r.score >= min_score][:top_k]
            graphs.append(SceneGraph(numbers[t], times[t], int(frame.shape[2]), int(frame.shape[1]), objects,
                                     tuple(relations)))
        return graphs

    def _name(self, label: int) -> str:
        return self.object_classes[label] if 0 <= label < len(self.object_classes) else str(label)


def clip_to_frame(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """xyxy ``boxes [N, 4]`` clipped to the frame's pixels ``[0, width - 1] x [0, height - 1]`` (the
    detector, as published, clips only the first frame of each chunk: docs/ag_and_eval.md 2.3)."""
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width - 1)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height - 1)
    return clipped


def _relations(pair_rows, pairs, where, scores, dists, constraint) -> list[Relation]:
    """Every (pair, predicate) of a frame with its ranking score, best first (stable: pair order,
    then the predicate's AG index, as the evaluator emits them)."""
    out = []
    for p in pair_rows:
        human, thing = int(pairs[p, 0]), int(pairs[p, 1])
        pair_score = float(scores[human]) * float(scores[thing])
        for rel, dist in zip(RELATION_TYPES, dists):
            row = dist[p]
            columns = [int(np.argmax(row))] if constraint == "with" else range(row.shape[0])
            subject, obj = (where[thing], where[human]) if rel.name == "spatial" else (where[human], where[thing])
            for c in columns:
                predicate = rel.offset + c
                out.append(Relation(subject, obj, rel.name, predicate, PREDICATES[predicate],
                                    pair_score * float(row[c]), float(row[c])))
    out.sort(key=lambda r: -r.score)
    return out


def gt_frames_from_boxes(boxes: Sequence[Sequence[Mapping[str, Any]]], num_frames: int,
                         object_classes: Sequence[str], need_classes: bool) -> list[list[dict[str, Any]]]:
    """User boxes -> the AG annotation records the loader reads (docs/ag_and_eval.md 1.8).

    ``boxes``: one list per frame of ``{"box": [x1, y1, x2, y2], "class": NAME or index}`` in the
    frame's pixels; exactly one box per frame has class ``person``; ``class`` of the other boxes is
    needed for predcls and ignored by sgcls (the model classifies them)."""
    if len(boxes) != num_frames:
        raise ValueError(f"boxes: one list per frame ({num_frames} frames), got {len(boxes)}")
    frames = []
    for t, frame_boxes in enumerate(boxes):
        person, objects = None, []
        for k, item in enumerate(frame_boxes):
            where = f"boxes[{t}][{k}]"
            box = _box(item, where)
            label = _label(item.get("class"), object_classes, where, need_classes)
            if label == 1:
                if person is not None:
                    raise ValueError(f"boxes[{t}]: more than one person box (AG has one person per frame)")
                person = box
            else:
                objects.append({"class": label if label is not None else 2, "bbox": box, "attention_relationship": [],
                                "spatial_relationship": [], "contacting_relationship": []})
        if person is None:
            raise ValueError(f"boxes[{t}]: no box of class 'person' (AG has one person per frame)")
        frames.append([{"person_bbox": np.asarray([person], dtype=np.float32)}, *objects])
    return frames


def _box(item: Any, where: str) -> list[float]:
    if not isinstance(item, Mapping) or "box" not in item:
        raise ValueError(f"{where}: expected a dict with 'box' [x1, y1, x2, y2] and 'class', got {item!r}")
    box = [float(v) for v in item["box"]]
    if len(box) != 4 or not all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"{where}: box must be [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2, got {item['box']!r}")
    return box


def _label(value: Any, object_classes: Sequence[str], where: str, need: bool) -> int | None:
    if isinstance(value, str):
        if value not in object_classes[1:]:
            raise ValueError(f"{where}: unknown class {value!r} (one of {', '.join(object_classes[1:])})")
        return object_classes.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value < len(object_classes):
        return value
    if value is None and not need:
        return None
    raise ValueError(f"{where}: class must be a class name or index 1..{len(object_classes) - 1}, got {value!r}")


def _frames(video: Any, selection: FrameSelection | None) -> tuple[list[torch.Tensor], list[int], list[float | None]]:
    """(uint8 BGR ``[3, H, W]`` frames, 1-based numbers, times) of any accepted ``video``."""
    if isinstance(video, (str, os.PathLike)):
        video = read_frames(video, selection)
    elif selection is not None:
        raise ValueError("selection: only for a video file (frames given as images are all used)")
    if isinstance(video, Sequence) and video and all(isinstance(f, VideoFrame) for f in video):
        return [_bgr(f.image) for f in video], [f.number for f in video], [f.time for f in video]
    if isinstance(video, torch.Tensor):
        if video.dim() != 4 or video.shape[1] != 3 or video.shape[0] == 0:
            raise ValueError(f"video: a tensor must be [T, 3, H, W] with T >= 1, got {tuple(video.shape)}")
        rgb = video if video.dtype == torch.uint8 else (video.float().clamp(0, 1) * 255).round().to(torch.uint8)
        images = [rgb[t].permute(1, 2, 0).cpu().numpy() for t in range(rgb.shape[0])]
    elif isinstance(video, Sequence) and len(video) > 0:
        images = [_array(image, t) for t, image in enumerate(video)]
    else:
        raise TypeError(f"video: expected a path, a non-empty list of frames or a [T, 3, H, W] tensor, "
                        f"got {type(video).__name__}")
    return [_bgr(image) for image in images], list(range(1, len(images) + 1)), [None] * len(images)


def _array(image: Any, t: int) -> np.ndarray:
    if hasattr(image, "convert"):                       # a PIL image
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"video[{t}]: a frame must be a PIL image or a uint8 [H, W, 3] RGB array, "
                         f"got {array.dtype} {array.shape}")
    return array


def _bgr(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))


def _detector(checkpoint, random_detector: bool, device, options: Mapping[str, Any] | None):
    from ..pipeline import make_detector
    if checkpoint is None and not random_detector:
        raise ValueError("detector_checkpoint: SGDet and SGCls need the AG detector (the published "
                         "faster_rcnn_ag.pth); pass random_detector=True to run with random weights")
    options = dict(options or {})
    detector, description = make_detector(os.fspath(checkpoint) if checkpoint else None, options.pop("target_size", None),
                                          0, str(device), options.pop("proposals", None))
    if options:
        raise ValueError(f"detector_options: unknown keys {sorted(options)} (target_size, proposals)")
    if checkpoint is None:
        warnings.warn(RANDOM_DETECTOR_WARNING, stacklevel=3)
        logger.warning(RANDOM_DETECTOR_WARNING)
    else:
        logger.info("detector: %s", description)
    return detector


def _check_options(top_k, min_score, constraint) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if not isinstance(min_score, (int, float)) or not np.isfinite(min_score):
        raise ValueError(f"min_score must be a finite number, got {min_score!r}")
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
