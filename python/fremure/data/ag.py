"""Action Genome annotation loader: the published ``AG`` dataset's annotation half, re-done.

Reads ``object_classes.txt``, ``relationship_classes.txt``, ``person_bbox.pkl`` and
``object_bbox_and_relationship.pkl`` (or its ``filtersmall`` variant) and keeps exactly the frames
and videos the reference loader keeps, in the same order, with ``gt_annotations`` in the same
format (docs/ag_and_eval.md 1.7-1.8). Differences, all behaviour-neutral on well-formed data:

* pickles are read with a restricted unpickler (``safe_pickle``), paths are joined properly, so
  ``data_path`` works with or without a trailing slash (Q-D9), and the filtersmall pickle path is
  configurable (default ``<data_path>/annotations/``);
* records are built anew instead of mutating the loaded pickle dicts (Q-D5), and every frame
  keeps its ``'frame'`` key (Q-D12);
* malformed entries (unknown class or predicate, visible object without a box, not exactly one
  attention label (Q-D4), more than one person box (Q-D3), ...) drop only the object or frame
  concerned and are recorded in ``issues`` and counted by ``report()``, instead of crashing;
  suspicious but loadable data (boxes outside the image, empty spatial/contacting lists, unsorted
  frames (Q-D2), mixed frame sizes in a video (Q-D6)) is kept as is and recorded as a warning;
* videos with exactly 2 kept frames are still dropped and counted in ``non_person_video``
  (Q-D1), but the report says what that counter really holds;
* ``filter_nonperson_box_frame=False`` keeps frames without a person box (their ``person_bbox``
  is an empty ``[0,4]`` array) instead of dropping every video (Q-D10).

The image half of the reference dataset (``__getitem__``: reading and scaling frames) lives with
the detector code; this class only exposes the frame paths.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..relations import NAMES, RELATION_TYPES
from .safe_pickle import safe_load

__all__ = ["OBJECT_CLASSES", "RELATIONSHIP_CLASSES", "OBJECT_CLASS_RENAMES", "RELATIONSHIP_RENAMES", "REL_TYPES",
           "REL_SLICES", "REL_SIZES", "REL_OFFSETS", "AGIssue", "AnnotationError", "EmptySplitError", "ActionGenome",
           "annotation_paths", "read_class_file"]

logger = logging.getLogger(__name__)

# Final index -> name lists after the loader's renames (docs/ag_and_eval.md 1.2, 1.3).
OBJECT_CLASSES: tuple[str, ...] = (
    "__background__", "person", "bag", "bed", "blanket", "book", "box", "broom", "chair",
    "closet/cabinet", "clothes", "cup/glass/bottle", "dish", "door", "doorknob", "doorway", "floor",
    "food", "groceries", "laptop", "light", "medicine", "mirror", "paper/notebook", "phone/camera",
    "picture", "pillow", "refrigerator", "sandwich", "shelf", "shoe", "sofa/couch", "table",
    "television", "towel", "vacuum", "window",
)
RELATIONSHIP_CLASSES: tuple[str, ...] = (
    "looking_at", "not_looking_at", "unsure",
    "above", "beneath", "in_front_of", "behind", "on_the_side_of", "in",
    "carrying", "covered_by", "drinking_from", "eating", "have_it_on_the_back", "holding",
    "leaning_on", "lying_on", "not_contacting", "other_relationship", "sitting_on", "standing_on",
    "touching", "twisting", "wearing", "wiping", "writing_on",
)
# Entries the reference overwrites by index after reading the text files.
OBJECT_CLASS_RENAMES: dict[int, str] = {i: OBJECT_CLASSES[i] for i in (9, 11, 23, 24, 31)}
RELATIONSHIP_RENAMES: dict[int, str] = {
    i: RELATIONSHIP_CLASSES[i] for i in (0, 1, 5, 7, 10, 11, 13, 15, 16, 17, 18, 19, 20, 25)
}

REL_TYPES: tuple[str, ...] = NAMES
REL_SLICES: dict[str, slice] = {r.name: r.predicates for r in RELATION_TYPES}
REL_SIZES: dict[str, int] = {r.name: r.classes for r in RELATION_TYPES}
REL_OFFSETS: dict[str, int] = {r.name: r.offset for r in RELATION_TYPES}

MINI_DATASIZE_KEYS = 80_000  # STTran/TEMPURA 'mini': first 80,000 person_bbox keys (Q-D11)
FILTERSMALL_NAME = "object_bbox_and_relationship_filtersmall.pkl"


class AnnotationError(ValueError):
    """Raised in ``strict`` mode for the first annotation problem that would drop data."""


class EmptySplitError(ValueError):
    """A split without a single usable video (:meth:`ActionGenome.require_videos`)."""


@dataclass(frozen=True)
class AGIssue:
    """One annotation problem; ``dropped`` is ``'frame'``, ``'object'`` or ``None`` (data kept as is)."""

    kind: str
    dropped: str | None
    file: str
    video: str | None
    frame: str | None
    message: str

    @property
    def severity(self) -> str:
        """``'error'`` when data was dropped, else ``'warning'``."""
        return "warning" if self.dropped is None else "error"

    def __str__(self) -> str:
        where = "/".join(p for p in (self.video, self.frame) if p) or "-"
        return f"{self.file} [{where}] {self.kind}: {self.message}"


def annotation_paths(data_path: str | os.PathLike, filter_small_box: bool = False,
                     filtersmall_path: str | os.PathLike | None = None) -> dict[str, pathlib.Path]:
    """Paths of the four annotation files the loader reads, keyed by role.

    Keys: ``object_classes``, ``relationship_classes``, ``person_bbox``, ``object_bbox`` (the
    filtersmall pickle when ``filter_small_box``; by default ``<data_path>/annotations/`` +
    ``object_bbox_and_relationship_filtersmall.pkl``, whereas the reference read it from
    ``./dataloader/`` relative to the working directory).
    """
    ann = pathlib.Path(data_path) / "annotations"
    if filter_small_box:
        object_bbox = pathlib.Path(filtersmall_path) if filtersmall_path is not None else ann / FILTERSMALL_NAME
    else:
        object_bbox = ann / "object_bbox_and_relationship.pkl"
    return {"object_classes": ann / "object_classes.txt", "relationship_classes": ann / "relationship_classes.txt",
            "person_bbox": ann / "person_bbox.pkl", "object_bbox": object_bbox}


def _letters(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def read_class_file(path: str | os.PathLike, expected_lines: int, renames: Mapping[int, str],
                    prefix: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Read a class list the way the reference does; return ``(names, mismatches)``.

    Each line loses only its trailing newline (other whitespace stays), ``prefix`` entries are
    prepended, then ``renames`` overwrite entries by final index. ``mismatches`` describes renamed
    entries whose raw text does not spell the same letters as the replacement (a sign the file is
    not AG's). Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or
    does not have ``expected_lines`` lines.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip("\n") for line in f.readlines()]
    if len(lines) != expected_lines:
        raise ValueError(f"{path}: expected {expected_lines} lines, found {len(lines)}")
    names = list(prefix) + lines
    mismatches = []
    for index, new in renames.items():
        if _letters(names[index]) != _letters(new):
            mismatches.append(f"entry {index} {names[index]!r} renamed to {new!r}")
        names[index] = new
    return names, mismatches


def _frame_order_key(key: str) -> tuple[int, int | str]:
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return (0, int(stem)) if stem.isdigit() else (1, stem)


class ActionGenome:
    """Action Genome annotations of one split, filtered exactly like the reference ``AG`` loader.

    Args:
        data_path: AG root holding ``annotations/`` and ``frames/`` (trailing slash optional).
        mode: split, ``'train'`` or ``'test'`` (read from each frame's first object's metadata).
        datasize: ``'large'`` (everything; what FReMuRe always uses) or ``'mini'`` (only the first
            ``mini_keys`` person_bbox keys, as STTran/TEMPURA).
        filter_nonperson_box_frame: drop frames without a person box (the reference setting).
        filter_small_box: read the filtersmall object pickle (the reference does for sgcls/sgdet).
        filtersmall_path: where that pickle is; default ``<data_path>/annotations/``.
        check_frames: also count kept frames whose PNG is missing under ``frames/`` (kept anyway).
        sort_frames: sort each video's frames by frame number (non-reference; the reference keeps
            person_bbox key order, which is sorted in AG; unsorted videos are always reported).
        strict: raise ``AnnotationError`` at the first problem that would drop data.

    Attributes (as the reference exposes them): ``object_classes`` (37 names),
    ``relationship_classes`` (26), ``attention_relationships`` (3), ``spatial_relationships`` (6),
    ``contacting_relationships`` (17), ``video_list`` (per kept video, its frame keys
    ``'VID.mp4/FRAME.png'``), ``gt_annotations`` (per video, per frame:
    ``[{'person_bbox': float32 [1,4] xyxy, 'frame': key}, object dicts...]``, object dicts with
    ``'class'`` int, ``'bbox'`` float64 [4] xyxy, ``'attention_relationship'`` int64 tensor [1],
    ``'spatial_relationship'`` / ``'contacting_relationship'`` int64 tensors of local indices,
    ``'metadata'``, ``'visible'``), ``video_size`` (per video ``(width, height)``),
    ``valid_video_names``, ``invalid_video_names`` (sorted; ``dropped_videos`` maps each to the
    reason), ``frames_path``, and the counters
    ``valid_nums``, ``non_gt_human_nums``, ``non_person_video``, ``one_frame_video``,
    ``non_heatmap_nums``. ``issues`` lists every problem found; ``report()`` counts everything.
    """

    def __init__(self, data_path: str | os.PathLike, mode: str = "train", datasize: str = "large",
                 filter_nonperson_box_frame: bool = True, filter_small_box: bool = False, *,
                 filtersmall_path: str | os.PathLike | None = None, check_frames: bool = False,
                 sort_frames: bool = False, strict: bool = False, mini_keys: int = MINI_DATASIZE_KEYS) -> None:
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if datasize not in ("large", "mini"):
            raise ValueError(f"datasize must be 'large' or 'mini', got {datasize!r}")
        if not isinstance(mini_keys, int) or mini_keys < 1:
            raise ValueError(f"mini_keys must be a positive int, got {mini_keys!r}")
        self.data_path = pathlib.Path(data_path)
        if not self.data_path.is_dir():
            raise FileNotFoundError(f"data_path is not a directory: {self.data_path}")
        self.mode, self.datasize = mode, datasize
        self.filter_nonperson_box_frame = bool(filter_nonperson_box_frame)
        self.filter_small_box = bool(filter_small_box)
        self.sort_frames, self.strict = bool(sort_frames), bool(strict)
        self.paths = annotation_paths(self.data_path, filter_small_box, filtersmall_path)
        self.frames_dir = self.data_path / "frames"
        self.frames_path = str(self.frames_dir) + os.sep
        self.issues: list[AGIssue] = []
        self._read_classes()
        person, objects = self._read_pickles()
        keys = list(person)[:mini_keys] if datasize == "mini" else list(person)
        self._reset_counters()
        self.keys_skipped_by_datasize = len(person) - len(keys)
        candidates = self._collect_candidates(keys, objects)
        self._build_videos(candidates, person, objects)
        self._count_orphan_object_keys(person, objects)
        self.missing_frame_images = self._count_missing_frames() if check_frames else None
        if logger.isEnabledFor(logging.INFO):  # the summary walks every record: only when shown
            logger.info("%s", self.summary())
        if self.dropped_text():
            logger.warning("AG %s: %s", self.mode, self.dropped_text())

    # ------------------------------------------------------------------ reading
    def _read_classes(self) -> None:
        self.object_classes, obj_mismatch = read_class_file(self.paths["object_classes"], len(OBJECT_CLASSES) - 1,
                                                            OBJECT_CLASS_RENAMES, prefix=["__background__"])
        self.relationship_classes, rel_mismatch = read_class_file(self.paths["relationship_classes"],
                                                                  len(RELATIONSHIP_CLASSES), RELATIONSHIP_RENAMES)
        for key, mismatches in (("object_classes", obj_mismatch), ("relationship_classes", rel_mismatch)):
            for message in mismatches:
                self._issue("class_file_mismatch", None, message, file=self.paths[key])
        self.attention_relationships = self.relationship_classes[REL_SLICES["attention"]]
        self.spatial_relationships = self.relationship_classes[REL_SLICES["spatial"]]
        self.contacting_relationships = self.relationship_classes[REL_SLICES["contacting"]]
        # The reference resolves names with list.index, i.e. the first occurrence wins.
        self._class_index = {n: i for i, n in reversed(list(enumerate(self.object_classes)))}
        self._rel_index = {t: {n: i for i, n in reversed(list(enumerate(self.relationship_classes[REL_SLICES[t]])))}
                           for t in REL_TYPES}
        self._rel_tables = [self._rel_index[t] for t in REL_TYPES]

    def _read_pickles(self) -> tuple[dict, dict]:
        loaded = []
        for role in ("person_bbox", "object_bbox"):
            path = self.paths[role]
            if role == "object_bbox" and self.filter_small_box and not path.is_file():
                raise FileNotFoundError(f"filtersmall pickle not found: {path} (the reference read "
                                        f"./dataloader/{FILTERSMALL_NAME}; pass filtersmall_path=)")
            data = safe_load(path)
            if not isinstance(data, dict):
                raise TypeError(f"{path}: expected a pickled dict keyed by 'VIDEO.mp4/FRAME.png', got {type(data).__name__}")
            loaded.append(data)
        return loaded[0], loaded[1]

    def _reset_counters(self) -> None:
        self.valid_nums = self.non_gt_human_nums = self.non_person_video = self.one_frame_video = 0
        self.two_frame_video = self.empty_video = self.frames_in_split = 0
        self.frames_without_visible_object = self.videos_without_visible_object = 0
        self.non_heatmap_nums = 0  # never incremented by the reference either; kept for API parity
        self.videos_in_split: list[str] = []
        self.video_list: list[list[str]] = []
        self.video_size: list[tuple[int, int] | None] = []
        self.gt_annotations: list[list[list[dict[str, Any]]]] = []
        self.valid_video_names: list[str] = []
        self.dropped_videos: dict[str, str] = {}

    # ------------------------------------------------------------------ issues
    def _issue(self, kind: str, dropped: str | None, message: str, *, file=None, video=None, frame=None) -> None:
        """Record a problem; ``dropped`` says what was removed because of it (None: nothing)."""
        file = file if file is not None else self.paths["object_bbox"]
        suffix = f"; {dropped} dropped" if dropped else ""
        issue = AGIssue(kind, dropped, str(file), video, frame, message + suffix)
        self.issues.append(issue)
        if self.strict and dropped:
            raise AnnotationError(str(issue))

    # ------------------------------------------------------------------ frame selection
    def _frame_split(self, video: str, frame: str, objs: Any) -> str | None:
        if not isinstance(objs, list) or not objs:
            what = "an empty list" if isinstance(objs, list) else f"a {type(objs).__name__}, not a list"
            self._issue("bad_object_entry", "frame", f"object entry is {what}", video=video, frame=frame)
            return None
        first = objs[0]
        try:
            split = first["metadata"]["set"]
        except (TypeError, KeyError):
            self._issue("missing_split", "frame", "first object has no metadata['set']", video=video, frame=frame)
            return None
        if split not in ("train", "test"):
            self._issue("unknown_split", "frame", f"metadata['set'] is {split!r}", video=video, frame=frame)
            return None
        unmarked = [i for i, obj in enumerate(objs) if isinstance(obj, dict) and "visible" not in obj]
        if unmarked and split == self.mode:
            self._issue("object_without_visible", "object", f"objects {unmarked[:5]} have no 'visible' key",
                        video=video, frame=frame)
        return split

    def _collect_candidates(self, keys: list, objects: dict) -> dict[str, list[str]]:
        """Frames of this split with >=1 visible object, grouped by video in key order."""
        candidates: dict[str, list[str]] = {}
        in_split: dict[str, None] = {}
        splits_seen: dict[str, set[str]] = {}
        for key in keys:
            if not isinstance(key, str) or key.count("/") != 1:
                self._issue("bad_key", "frame", f"key {key!r} is not 'VIDEO.mp4/FRAME.png'", file=self.paths["person_bbox"])
                continue
            video, frame = key.split("/")
            if key not in objects:
                self._issue("missing_object_entry", "frame", "key absent from the object pickle", video=video, frame=frame)
                continue
            objs = objects[key]
            split = self._frame_split(video, frame, objs)
            if split is not None:
                splits_seen.setdefault(video, set()).add(split)
            if split != self.mode:
                continue
            in_split[video] = None
            self.frames_in_split += 1
            if any(isinstance(o, dict) and o.get("visible") for o in objs):
                candidates.setdefault(video, []).append(key)
            else:
                self.frames_without_visible_object += 1
        self.videos_in_split = list(in_split)
        self.videos_without_visible_object = len(in_split) - len(candidates)
        for video in in_split:
            if len(splits_seen[video]) > 1:
                self._issue("mixed_split_video", None, f"frames carry different splits {sorted(splits_seen[video])}; "
                            f"only its {self.mode!r} frames are used", video=video)
        return candidates

    def _count_orphan_object_keys(self, person: dict, objects: dict) -> None:
        orphans = [k for k in objects if k not in person]
        if orphans:
            self._issue("object_key_without_person_entry", None,
                        f"{len(orphans)} keys of the object pickle are absent from person_bbox.pkl and ignored "
                        f"(as the reference does), e.g. {orphans[:3]}")
        self.object_keys_without_person_entry = len(orphans)

    # ------------------------------------------------------------------ per video
    def _build_videos(self, candidates: dict[str, list[str]], person: dict, objects: dict) -> None:
        for video, keys in candidates.items():
            if self.sort_frames:
                keys = sorted(keys, key=_frame_order_key)
            kept_keys, frames = self._build_frames(video, keys, person, objects)
            self._check_frame_order(video, kept_keys)
            n = len(kept_keys)
            if n > 2:
                self.video_list.append(kept_keys)
                self.video_size.append(self._video_size(video, keys, person))
                self.gt_annotations.append(frames)
                self.valid_video_names.append(video)
            elif n == 1:
                self.one_frame_video += 1
                self.dropped_videos[video] = "only one frame with a person box"
            else:  # the reference counts both 0 and 2 kept frames as "no person" (Q-D1)
                self.non_person_video += 1
                self.two_frame_video += n == 2
                self.empty_video += n == 0
                self.dropped_videos[video] = "only two frames with a person box" if n else "no frame with a person box"
        kept = set(self.valid_video_names)
        for video in self.videos_in_split:
            if video not in kept and video not in self.dropped_videos:
                self.dropped_videos[video] = "no frame with a visible object"
        self.invalid_video_names = sorted(v for v in self.videos_in_split if v not in kept)

    def _build_frames(self, video: str, keys: list[str], person: dict, objects: dict):
        kept_keys, frames = [], []
        for key in keys:
            frame = key.split("/")[1]
            person_box = self._person_box(person[key], video, frame)
            if person_box is None:
                continue
            if person_box.shape[0] == 0:
                self.non_gt_human_nums += 1
                if self.filter_nonperson_box_frame:
                    continue
            size = self._frame_size(person[key])
            records = self._object_records(objects[key], size, video, frame)
            if not records:
                self._issue("no_valid_object", "frame", "every visible object was malformed", video=video, frame=frame)
                continue
            if size is not None and person_box.shape[0]:
                self._check_bounds(person_box[0], size, "person box", video, frame, self.paths["person_bbox"])
            self.valid_nums += 1
            kept_keys.append(key)
            frames.append([{"person_bbox": person_box, "frame": key}] + records)
        return kept_keys, frames

    def _check_frame_order(self, video: str, kept_keys: list[str]) -> None:
        order = [_frame_order_key(k) for k in kept_keys]
        if any(a >= b for a, b in zip(order, order[1:])):
            self._issue("unsorted_frames", None, "frames are not in increasing frame-number order; kept in person_bbox "
                        "key order (sort_frames=True sorts)", file=self.paths["person_bbox"], video=video)

    def _video_size(self, video: str, keys: list[str], person: dict) -> tuple[int, int] | None:
        """The reference takes bbox_size of the video's last candidate frame, kept or not (Q-D6)."""
        sizes = [self._frame_size(person[k]) for k in keys]
        distinct = {s for s in sizes if s is not None}
        if len(distinct) > 1:
            self._issue("mixed_frame_size", None, f"frames have different bbox_size values {sorted(distinct)}",
                        file=self.paths["person_bbox"], video=video)
        valid = [s for s in sizes if s is not None]
        return sizes[-1] if sizes[-1] is not None else (valid[-1] if valid else None)

    # ------------------------------------------------------------------ person entries
    def _person_box(self, entry: Any, video: str, frame: str) -> np.ndarray | None:
        """Person boxes as float32 [k,4] with k in {0,1}; None (and an issue) when malformed."""
        file = self.paths["person_bbox"]
        if not isinstance(entry, dict) or "bbox" not in entry:
            self._issue("bad_person_entry", "frame", "person entry is not a dict with 'bbox'", file=file, video=video, frame=frame)
            return None
        try:
            box = np.array(entry["bbox"], dtype=np.float32)
        except (TypeError, ValueError):
            self._issue("bad_person_box", "frame", "person 'bbox' is not numeric", file=file, video=video, frame=frame)
            return None
        if box.ndim >= 1 and box.shape[0] == 0:
            return np.zeros((0, 4), dtype=np.float32)
        if box.ndim != 2 or box.shape[1] != 4:
            self._issue("bad_person_box", "frame", f"person 'bbox' has shape {box.shape}, expected [k,4]", file=file, video=video, frame=frame)
            return None
        if box.shape[0] > 1:
            self._issue("multiple_person_boxes", "frame", f"{box.shape[0]} person boxes (the pipeline takes one)", file=file, video=video, frame=frame)
            return None
        if not np.isfinite(box).all():
            self._issue("bad_person_box", "frame", "person box is not finite", file=file, video=video, frame=frame)
            return None
        return box

    @staticmethod
    def _frame_size(entry: Any) -> tuple[int, int] | None:
        size = entry.get("bbox_size") if isinstance(entry, dict) else None
        if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
            return (int(size[0]), int(size[1]))
        return None

    # ------------------------------------------------------------------ object entries
    def _object_records(self, objs: list, size, video: str, frame: str) -> list[dict[str, Any]]:
        records = []
        for position, obj in enumerate(objs):
            if not isinstance(obj, dict):
                self._issue("bad_object", "object", f"object {position} is a {type(obj).__name__}, not a dict", video=video, frame=frame)
                continue
            if obj.get("visible"):
                record = self._fast_object_record(obj, size)
                if record is None:  # something is off: redo it with full diagnostics
                    record = self._object_record(obj, position, size, video, frame)
                if record is not None:
                    records.append(record)
        return records

    def _fast_object_record(self, obj: dict, size) -> dict[str, Any] | None:
        """The record of a well-formed object, or None whenever any check would speak up.

        AG has millions of objects; this path does only the conversions, and hands anything
        unusual (including boxes outside the image) to ``_object_record``, which reports it.
        """
        try:
            x, y, w, h = (float(v) for v in obj["bbox"])
            cls = self._class_index[obj["class"]]
            names = [obj[f"{t}_relationship"] for t in REL_TYPES]
            if any(isinstance(n, str) or not n for n in names) or len(names[0]) != 1:
                return None
            indices = [[table[n] for n in group] for table, group in zip(self._rel_tables, names)]
        except (KeyError, TypeError, ValueError):
            return None
        if not (w > 0 and h > 0 and math.isfinite(x + y + w + h)):
            return None
        if size is not None and (x < 0 or y < 0 or x + w > size[0] or y + h > size[1]):
            return None
        return self._make_record(obj, cls, np.array((x, y, x + w, y + h), dtype=np.float64), indices)

    @staticmethod
    def _make_record(obj: dict, cls: int, xyxy: np.ndarray, indices: list[list[int]]) -> dict[str, Any]:
        """A new dict (the pickle's stays untouched, Q-D5) with the converted fields."""
        record = dict(obj)
        record["class"] = cls
        record["bbox"] = xyxy
        meta = obj.get("metadata")
        record["metadata"] = dict(meta) if isinstance(meta, dict) else meta
        for rel_type, labels in zip(REL_TYPES, indices):
            # from_numpy is ~3x faster than torch.tensor for these tiny lists
            record[f"{rel_type}_relationship"] = torch.from_numpy(np.array(labels, dtype=np.int64))
        return record

    def _object_record(self, obj: dict, position: int, size, video: str, frame: str) -> dict[str, Any] | None:
        """The checked path: the record, recording every problem found (None when dropped)."""
        where = dict(video=video, frame=frame)
        label = f"object {position} ({obj.get('class')!r})"
        xyxy = self._object_box(obj.get("bbox"), label, video, frame)
        if xyxy is None:
            return None
        cls = self._class_index.get(obj.get("class")) if isinstance(obj.get("class"), str) else None
        if cls is None:
            self._issue("unknown_class", "object", f"{label}: class not in object_classes", **where)
            return None
        relations = []
        for rel_type in REL_TYPES:
            indices = self._relation_indices(obj, rel_type, label, video, frame)
            if indices is None:
                return None
            relations.append(indices)
        if len(relations[0]) != 1:
            self._issue("attention_count", "object", f"{label}: {len(relations[0])} attention labels, expected exactly 1", **where)
            return None
        if size is not None:
            self._check_bounds(xyxy, size, label, video, frame, self.paths["object_bbox"])
        return self._make_record(obj, cls, xyxy, relations)

    def _object_box(self, bbox: Any, label: str, video: str, frame: str) -> np.ndarray | None:
        """xywh -> float64 [4] xyxy; None (and an issue) when missing or malformed."""
        if bbox is None:
            self._issue("visible_without_bbox", "object", f"{label}: visible but bbox is None", video=video, frame=frame)
            return None
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            self._issue("bad_bbox", "object", f"{label}: bbox {bbox!r} is not 4 numbers", video=video, frame=frame)
            return None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            self._issue("bad_bbox", "object", f"{label}: bbox {bbox!r} is not finite", video=video, frame=frame)
            return None
        if w <= 0 or h <= 0:
            self._issue("degenerate_bbox", None, f"{label}: bbox width/height {w}x{h} not positive; kept", video=video, frame=frame)
        return np.array([x, y, x + w, y + h], dtype=np.float64)

    def _relation_indices(self, obj: dict, rel_type: str, label: str, video: str, frame: str) -> list[int] | None:
        names = obj.get(f"{rel_type}_relationship")
        if names is None or (isinstance(names, (list, tuple)) and len(names) == 0):
            if rel_type != "attention":  # an empty attention list is reported by the count check
                self._issue(f"empty_{rel_type}_relationship", None, f"{label}: no {rel_type} predicate; kept", video=video, frame=frame)
            return []
        if not isinstance(names, (list, tuple)):
            self._issue("bad_relationship", "object", f"{label}: {rel_type}_relationship is a {type(names).__name__}, not a list", video=video, frame=frame)
            return None
        table = self._rel_index[rel_type]
        unknown = [n for n in names if n not in table]
        if unknown:
            self._issue("unknown_predicate", "object", f"{label}: unknown {rel_type} predicate(s) {unknown}", video=video, frame=frame)
            return None
        return [table[n] for n in names]

    def _check_bounds(self, xyxy: np.ndarray, size: tuple[int, int], label: str, video: str, frame: str, file) -> None:
        width, height = size
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            self._issue("bbox_outside_image", None,
                        f"{label}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) exceeds the {width}x{height} image; kept",
                        file=file, video=video, frame=frame)

    # ------------------------------------------------------------------ frames on disk
    def _count_missing_frames(self) -> int:
        missing = 0
        for keys in self.video_list:
            for key in keys:
                if not (self.frames_dir / key).is_file():
                    missing += 1
                    video, frame = key.split("/")
                    self._issue("missing_frame_image", None, f"{self.frames_dir / key} does not exist",
                                file=self.frames_dir, video=video, frame=frame)
        return missing

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return len(self.video_list)

    def dropped_text(self) -> str:
        """``'12 frames and 3 objects dropped for malformed annotations (kind: count, ...)'``, or ''
        when nothing was dropped."""
        dropping = [issue for issue in self.issues if issue.dropped]
        if not dropping:
            return ""
        dropped = Counter(issue.dropped for issue in dropping)
        kinds = ", ".join(f"{kind}: {n}" for kind, n in Counter(i.kind for i in dropping).most_common())
        return (f"{dropped['frame']} frames and {dropped['object']} objects dropped for malformed annotations "
                f"({kinds}; e.g. {dropping[0]})")

    def require_videos(self) -> "ActionGenome":
        """``self``; EmptySplitError naming the split, the pickles and what was dropped when no
        video is left (training on it would run on nothing)."""
        if len(self):
            return self
        dropped = self.dropped_text() or "no annotation entry was malformed"
        raise EmptySplitError(f"the AG {self.mode} split of {self.data_path} has no usable video "
                              f"({self.paths['person_bbox'].name}, {self.paths['object_bbox'].name}): {dropped}; "
                              "see fremure check-data")

    def frame_paths(self, index: int) -> list[pathlib.Path]:
        """Image paths ``<data_path>/frames/VID.mp4/FRAME.png`` of kept video ``index``, in order."""
        return [self.frames_dir / key for key in self.video_list[index]]

    def issue_counts(self) -> dict[str, int]:
        """Number of recorded issues per kind."""
        return dict(Counter(issue.kind for issue in self.issues))

    def report(self) -> dict[str, Any]:
        """Every count of the load: reference counters plus what the reference left uncounted.

        ``non_person_video`` is the reference counter (videos with 0 or 2 kept frames); it splits
        into ``empty_video`` + ``two_frame_video``. ``valid_nums`` counts frames with a person box
        before the >=3-frame video filter, as the reference prints it; ``kept_frames`` counts the
        frames of kept videos. ``dropped_frames_by_issue`` / ``dropped_objects_by_issue`` count data
        removed because it was malformed (see ``issues``).
        """
        dropped = Counter(issue.dropped for issue in self.issues)
        return {
            "mode": self.mode,
            "object_pickle": str(self.paths["object_bbox"]),
            "videos": len(self.video_list),
            "kept_frames": sum(len(v) for v in self.video_list),
            "kept_objects": sum(len(f) - 1 for v in self.gt_annotations for f in v),
            "valid_nums": self.valid_nums,
            "non_person_video": self.non_person_video,
            "empty_video": self.empty_video,
            "two_frame_video": self.two_frame_video,
            "one_frame_video": self.one_frame_video,
            "non_gt_human_nums": self.non_gt_human_nums,
            "keys_skipped_by_datasize": self.keys_skipped_by_datasize,
            "frames_in_split": self.frames_in_split,
            "frames_without_visible_object": self.frames_without_visible_object,
            "videos_in_split": len(self.videos_in_split),
            "videos_without_visible_object": self.videos_without_visible_object,
            "invalid_videos": len(self.invalid_video_names),
            "dropped_frames_by_issue": dropped["frame"],
            "dropped_objects_by_issue": dropped["object"],
            "missing_frame_images": self.missing_frame_images,
            "issues": self.issue_counts(),
        }

    def summary(self) -> str:
        """Human-readable report: the reference's four lines (with honest wording) plus the extras."""
        r = self.report()
        lines = [
            f"AG {self.mode} ({pathlib.Path(r['object_pickle']).name}): "
            f"There are {r['videos']} videos and {r['valid_nums']} valid frames ({r['kept_frames']} in kept videos)",
            f"{r['non_person_video']} videos are invalid (fewer than 3 frames with a person box: "
            f"{r['empty_video']} with none, {r['two_frame_video']} with two), remove them",
            f"{r['one_frame_video']} videos are invalid (only one frame), remove them",
            f"{r['non_gt_human_nums']} frames have no human bbox in GT"
            + (", remove them!" if self.filter_nonperson_box_frame else " (kept)"),
            f"{r['frames_without_visible_object']} of {r['frames_in_split']} frames of the split have no visible object; "
            f"{r['videos_without_visible_object']} videos have no such frame at all",
        ]
        if self.issues:
            lines.append(f"{len(self.issues)} annotation issues: {r['issues']} "
                         f"({r['dropped_frames_by_issue']} frames and {r['dropped_objects_by_issue']} objects dropped)")
        if r["missing_frame_images"] is not None:
            lines.append(f"{r['missing_frame_images']} kept frames have no image under {self.frames_dir}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ActionGenome(data_path={str(self.data_path)!r}, mode={self.mode!r}, videos={len(self)})"
