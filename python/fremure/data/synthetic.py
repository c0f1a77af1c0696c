"""Synthetic Action Genome: small datasets in AG's exact on-disk format, with learnable labels.

``generate_synthetic_ag`` writes ``annotations/`` (both class lists with AG's raw spellings,
``person_bbox.pkl``, ``object_bbox_and_relationship.pkl`` and its ``filtersmall`` variant) and
``frames/<VIDEO>.mp4/<FRAME>.png`` exactly as docs/ag_and_eval.md 1.1-1.6 describe, so every loader,
detector and evaluator path can run without the real data.

What is in it:

* one person and 1-5 objects per video, all listed in every frame (``visible=False`` when hidden,
  out of the image or randomly occluded), moving smoothly (sinusoids plus drift);
* object classes drawn from a long-tailed (Zipf-like) distribution in roughly AG's order, and per
  class a behaviour (held, worn, support, cover, touch, scene, container) that decides where the
  object sits relative to the person and which contacting predicates it takes;
* predicates derived from what the image shows, so a model can learn them: the spatial relation
  from the relative box position and drawing depth (front objects are drawn over the person), the
  contacting relation from the behaviour and box overlap, attention from the direction the person
  faces (drawn as an eye on one side of the head);
* the train/test split per video in every object's ``metadata['set']``, train and test videos
  interleaved in key order; ``person_bbox.pkl`` keys sorted, ``object_bbox_and_relationship.pkl``
  keys shuffled (as in AG);
* loader edge cases: frames without a person box, frames without visible objects, and (with
  ``edge_case_videos``) per split a one-frame video, a two-frame video, a video without any
  person box and a video without any visible object;
* frames as flat-coloured PNGs: a background, one colour and texture (solid, stripes, checker)
  per object class, the person as a body and a head.

Everything is a function of the seed (PCG64 draws, ``math`` trigonometry, coordinates rounded to
0.1 px), so regenerating with the same arguments reproduces the pickles byte for byte.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import pathlib
import pickle
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .ag import FILTERSMALL_NAME, OBJECT_CLASS_RENAMES, OBJECT_CLASSES, RELATIONSHIP_CLASSES, RELATIONSHIP_RENAMES
from .prepare import filter_small_boxes

__all__ = ["ClassBehaviour", "CLASS_BEHAVIOURS", "SyntheticAG", "SyntheticVideo", "SAMPLE_CONFIG",
           "generate_synthetic_ag", "sample_path", "write_sample", "raw_class_lines", "main"]

_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_EDGE_KINDS = ("one_frame", "two_frames", "no_person", "no_visible")


@dataclass(frozen=True)
class ClassBehaviour:
    """How objects of one class appear: frequency weight, size relative to the person box
    ``(w, h)``, behaviour modes with weights, and contacting predicates (with weights) used when
    the object touches the person."""

    weight: float
    size: tuple[float, float]
    modes: dict[str, float]
    actions: dict[str, float]


_cb = ClassBehaviour   # a short name for the table below
# Ordered roughly by AG's object frequency; weights fall off like a Zipf law.
CLASS_BEHAVIOURS: dict[str, ClassBehaviour] = {
    "table": _cb(10, (1.6, 0.45), {"touch": 0.6, "scene": 0.4}, {"touching": 3, "leaning_on": 1}),
    "chair": _cb(9, (1.0, 0.5), {"support": 0.7, "scene": 0.3}, {"sitting_on": 5, "leaning_on": 1}),
    "cup/glass/bottle": _cb(8, (0.3, 0.16), {"held": 0.75, "scene": 0.25}, {"holding": 5, "drinking_from": 3}),
    "phone/camera": _cb(7, (0.35, 0.14), {"held": 0.8, "scene": 0.2}, {"holding": 6, "touching": 2}),
    "food": _cb(6, (0.45, 0.15), {"held": 0.5, "scene": 0.5}, {"holding": 3, "eating": 3}),
    "clothes": _cb(6, (0.9, 0.45), {"worn": 0.6, "held": 0.4}, {"wearing": 4, "holding": 2}),
    "book": _cb(5, (0.4, 0.18), {"held": 0.7, "scene": 0.3}, {"holding": 5, "touching": 1}),
    "door": _cb(5, (1.2, 1.05), {"touch": 0.6, "scene": 0.4}, {"touching": 3, "leaning_on": 1}),
    "sofa/couch": _cb(5, (2.0, 0.5), {"support": 0.8, "scene": 0.2}, {"sitting_on": 5, "lying_on": 2}),
    "blanket": _cb(4, (1.3, 0.5), {"cover": 0.7, "held": 0.3}, {"covered_by": 4, "holding": 2}),
    "floor": _cb(4, (4.0, 0.2), {"support": 1.0}, {"standing_on": 6, "sitting_on": 1}),
    "bed": _cb(4, (2.2, 0.6), {"support": 0.8, "scene": 0.2}, {"lying_on": 4, "sitting_on": 2}),
    "dish": _cb(3, (0.4, 0.14), {"held": 0.6, "scene": 0.4}, {"holding": 5, "wiping": 1}),
    "laptop": _cb(3, (0.55, 0.3), {"touch": 0.6, "held": 0.4}, {"touching": 4, "holding": 2}),
    "paper/notebook": _cb(3, (0.4, 0.18), {"held": 0.6, "scene": 0.4}, {"holding": 4, "writing_on": 2}),
    "bag": _cb(3, (0.55, 0.35), {"worn": 0.5, "held": 0.5}, {"have_it_on_the_back": 3, "carrying": 3, "holding": 1}),
    "pillow": _cb(2.5, (0.55, 0.25), {"held": 0.5, "scene": 0.5}, {"holding": 3, "lying_on": 1}),
    "box": _cb(2.5, (0.55, 0.4), {"held": 0.6, "scene": 0.4}, {"holding": 3, "carrying": 2}),
    "shelf": _cb(2, (1.0, 0.35), {"scene": 0.8, "touch": 0.2}, {"touching": 1}),
    "closet/cabinet": _cb(2, (1.0, 1.0), {"touch": 0.5, "container": 0.5}, {"touching": 3, "twisting": 1}),
    "television": _cb(2, (0.9, 0.5), {"scene": 1.0}, {"touching": 1}),
    "towel": _cb(1.5, (0.45, 0.3), {"held": 0.7, "worn": 0.3}, {"holding": 3, "wiping": 2}),
    "sandwich": _cb(1.5, (0.3, 0.14), {"held": 0.8, "scene": 0.2}, {"eating": 3, "holding": 3}),
    "doorknob": _cb(1.2, (0.15, 0.1), {"touch": 0.8, "scene": 0.2}, {"twisting": 2, "touching": 3}),
    "light": _cb(1.2, (0.35, 0.2), {"scene": 0.9, "touch": 0.1}, {"touching": 1}),
    "groceries": _cb(1, (0.55, 0.35), {"held": 0.7, "scene": 0.3}, {"carrying": 3, "holding": 2}),
    "broom": _cb(1, (0.18, 0.9), {"held": 1.0}, {"holding": 4, "touching": 1}),
    "mirror": _cb(1, (0.5, 0.6), {"scene": 0.9, "touch": 0.1}, {"touching": 1}),
    "picture": _cb(1, (0.5, 0.35), {"scene": 1.0}, {"touching": 1}),
    "window": _cb(1, (0.9, 0.6), {"scene": 1.0}, {"touching": 1}),
    "medicine": _cb(0.8, (0.2, 0.14), {"held": 0.8, "scene": 0.2}, {"holding": 3, "eating": 1}),
    "vacuum": _cb(0.8, (0.4, 0.6), {"held": 1.0}, {"holding": 4, "other_relationship": 1}),
    "shoe": _cb(0.7, (0.3, 0.12), {"worn": 0.6, "held": 0.4}, {"wearing": 3, "holding": 1}),
    "refrigerator": _cb(0.6, (0.9, 1.15), {"touch": 0.6, "container": 0.4}, {"touching": 2, "twisting": 1}),
    "doorway": _cb(0.6, (1.6, 1.2), {"container": 1.0}, {"other_relationship": 1}),
}
assert set(CLASS_BEHAVIOURS) == set(OBJECT_CLASSES[2:]), "every AG object class needs a behaviour"

_WALL_CLASSES = {"picture", "window", "light", "mirror", "shelf", "television"}
_FRONT_MODES = {"held", "cover"}  # drawn over the person
# COCO-17 keypoints as fractions of the person box (nose, eyes, ears, shoulders, elbows, wrists,
# hips, knees, ankles); only stored, the loaders ignore them.
_KEYPOINTS_REL = ((0.5, 0.08), (0.45, 0.06), (0.55, 0.06), (0.4, 0.08), (0.6, 0.08), (0.3, 0.22), (0.7, 0.22),
                  (0.2, 0.38), (0.8, 0.38), (0.15, 0.52), (0.85, 0.52), (0.35, 0.55), (0.65, 0.55), (0.35, 0.76),
                  (0.65, 0.76), (0.35, 0.97), (0.65, 0.97))

SAMPLE_CONFIG: dict[str, Any] = dict(num_videos=18, frames_per_video=(6, 10), seed=0, image_size=(128, 96),
                                     test_fraction=1 / 3, objects_per_video=(1, 5), p_no_person=0.05,
                                     p_no_visible=0.05, edge_case_videos=True, small_box_edge=16.0, pickle_protocol=4)


@dataclass
class SyntheticVideo:
    """One generated video: its name (``'ID.mp4'``), split, kind (``'normal'`` or an edge case)
    and its frame keys in temporal order."""

    name: str
    split: str
    kind: str
    frame_keys: list[str] = field(default_factory=list)


@dataclass
class SyntheticAG:
    """What ``generate_synthetic_ag`` wrote: the root, the videos and the arguments used."""

    root: pathlib.Path
    videos: list[SyntheticVideo]
    config: dict[str, Any]

    def video_names(self, split: str) -> list[str]:
        """Names of the videos of ``split`` in key order."""
        return sorted(v.name for v in self.videos if v.split == split)


# ---------------------------------------------------------------------------------------- helpers
def _r1(value: float) -> float:
    """Round to 0.1 px so geometry decisions do not depend on last-bit float differences."""
    return round(float(value), 1)


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.asarray([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _clip_box(box: tuple[float, float, float, float], width: int, height: int):
    x1, y1, x2, y2 = box
    return (_r1(min(max(x1, 0.0), width)), _r1(min(max(y1, 0.0), height)),
            _r1(min(max(x2, 0.0), width)), _r1(min(max(y2, 0.0), height)))


def _area(box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def _intersection(a, b) -> float:
    return max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)


def raw_class_lines() -> tuple[list[str], list[str]]:
    """The two class files' lines as AG spells them before the loader's renames (no underscores
    or slashes, ``'closetcabinet '`` with its trailing space)."""
    objects = list(OBJECT_CLASSES[1:])
    for index in OBJECT_CLASS_RENAMES:
        objects[index - 1] = OBJECT_CLASSES[index].replace("/", "")
    objects[9 - 1] += " "
    relations = list(RELATIONSHIP_CLASSES)
    for index in RELATIONSHIP_RENAMES:
        relations[index] = RELATIONSHIP_CLASSES[index].replace("_", "")
    return objects, relations


# ---------------------------------------------------------------------------------------- motion
@dataclass
class _Person:
    width: float
    height: float
    cx0: float
    vx: float
    amp: float
    omega: float
    phase: float
    floor_y: float
    facing: int
    flip_at: int  # frame index where the person turns round (-1: never)

    def box(self, t: int, image_w: int) -> tuple[float, float, float, float]:
        half = self.width / 2
        cx = self.cx0 + self.vx * t + self.amp * math.sin(self.omega * t + self.phase)
        cx = min(max(cx, half + 1), image_w - half - 1)
        y2 = self.floor_y + 0.01 * self.height * math.sin(2 * self.omega * t)
        return (_r1(cx - half), _r1(y2 - self.height), _r1(cx + half), _r1(y2))

    def facing_at(self, t: int) -> int:
        return -self.facing if 0 <= self.flip_at <= t else self.facing


@dataclass
class _Object:
    cls: str
    mode: str
    front: bool
    width: float
    height: float
    primary: str
    secondary: str | None
    side: int
    amp: float
    omega: float
    phase: float
    anchor: tuple[float, float]
    drift: float

    def box(self, t: int, person: tuple[float, float, float, float], facing: int, size: tuple[int, int]):
        """Unclipped box at frame ``t`` given the person box (the person moves, objects follow)."""
        image_w, image_h = size
        px1, py1, px2, py2 = person
        pw, ph, pcx = px2 - px1, py2 - py1, (px1 + px2) / 2
        wobble = self.amp * math.sin(self.omega * t + self.phase)
        w, h = self.width, self.height
        if self.mode == "held":
            cx, cy = pcx + facing * 0.42 * pw, py1 + 0.5 * ph + wobble
        elif self.mode == "worn":
            if self.cls == "shoe":
                cx, cy = pcx + self.side * 0.2 * pw, py2 - h / 2
            elif self.cls == "bag":
                cx, cy = pcx - facing * 0.35 * pw, py1 + 0.4 * ph
            else:
                cx, cy = pcx, py1 + 0.48 * ph
        elif self.mode == "support":
            if self.cls == "floor":
                return (0.0, py2 - 0.08 * image_h, float(image_w), float(image_h))
            cx, cy = pcx + self.side * 0.1 * pw + wobble, py1 + 0.8 * ph
        elif self.mode == "cover":
            cx, cy = pcx, py1 + 0.72 * ph
        elif self.mode == "touch":
            reach = 0.5 * pw + 0.5 * w - 0.2 * min(pw, w)
            cx, cy = pcx + self.side * (reach + wobble), py1 + self.anchor[1] * ph
        else:  # scene and container objects stay put while the camera drifts
            cx, cy = self.anchor[0] + self.drift * t + 0.3 * wobble, self.anchor[1]
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _new_person(rng: np.random.Generator, size: tuple[int, int], num_frames: int) -> _Person:
    image_w, image_h = size
    height = image_h * rng.uniform(0.6, 0.8)
    width = max(image_w * rng.uniform(0.2, 0.3), 8.0)
    return _Person(width=width, height=height, cx0=image_w * rng.uniform(0.3, 0.7),
                   vx=image_w * rng.uniform(-0.02, 0.02), amp=image_w * rng.uniform(0.0, 0.06),
                   omega=rng.uniform(0.3, 0.9), phase=rng.uniform(0, 2 * math.pi),
                   floor_y=image_h * rng.uniform(0.86, 0.97), facing=int(rng.choice((-1, 1))),
                   flip_at=int(rng.integers(1, num_frames)) if num_frames > 1 and rng.random() < 0.3 else -1)


def _new_object(rng: np.random.Generator, cls: str, person: _Person, size: tuple[int, int]) -> _Object:
    image_w, image_h = size
    behaviour = CLASS_BEHAVIOURS[cls]
    mode = _choice(rng, behaviour.modes)
    scale = rng.uniform(0.8, 1.2)
    width = behaviour.size[0] * person.width * scale
    height = behaviour.size[1] * person.height * scale
    if cls == "floor":
        width, height = float(image_w), 0.08 * image_h
    primary = _choice(rng, behaviour.actions)
    others = {k: v for k, v in behaviour.actions.items() if k != primary}
    secondary = _choice(rng, others) if others else None
    if mode == "touch":
        anchor = (0.0, rng.uniform(0.3, 0.7))
    elif cls in _WALL_CLASSES:
        anchor = (image_w * rng.uniform(0.1, 0.9), max(image_h * rng.uniform(0.05, 0.3), height / 2))
    else:
        anchor = (image_w * rng.uniform(0.1, 0.9), image_h * rng.uniform(0.45, 0.85))
    front = mode in _FRONT_MODES or (mode in ("touch", "scene") and rng.random() < 0.35)
    if mode == "worn":
        front = cls != "bag"
    return _Object(cls=cls, mode=mode, front=bool(front), width=width, height=height, primary=primary,
                   secondary=secondary, side=int(rng.choice((-1, 1))),
                   amp=rng.uniform(0.05, 0.25) * min(person.width, width), omega=rng.uniform(0.3, 1.0),
                   phase=rng.uniform(0, 2 * math.pi), anchor=anchor, drift=image_w * rng.uniform(-0.01, 0.01))


# ---------------------------------------------------------------------------------------- labels
def _spatial(obj_box, person_box, front: bool) -> list[str]:
    """Spatial predicates of the object relative to the person, read off the boxes and depth."""
    ox1, oy1, ox2, oy2 = obj_box
    px1, py1, px2, py2 = person_box
    pcx, pcy, ph = (px1 + px2) / 2, (py1 + py2) / 2, py2 - py1
    depth = "in_front_of" if front else "behind"
    overlap_x = max(min(ox2, px2) - max(ox1, px1), 0.0)
    wide_overlap = overlap_x > 0.5 * (ox2 - ox1)
    if ox1 <= pcx <= ox2 and oy1 <= pcy <= oy2 and _area(obj_box) > _area(person_box):
        return ["in"]
    if oy2 <= py1 + 0.1 * ph:
        return ["above", depth] if wide_overlap else ["above"]
    if (oy1 + oy2) / 2 >= py1 + 0.75 * ph:
        return ["beneath", depth] if wide_overlap else ["beneath"]
    if overlap_x == 0.0:
        return ["on_the_side_of"]
    return [depth]


def _contacting(obj: _Object, obj_box, person_box, rng: np.random.Generator) -> list[str]:
    """Contact follows the behaviour and, for 'touch' objects, the overlap with the person."""
    if obj.mode in ("scene", "container"):
        return ["not_contacting"]
    if obj.mode == "touch" and _intersection(obj_box, person_box) <= 0.05 * _area(obj_box):
        return ["not_contacting"]
    if obj.secondary is not None and rng.random() < 0.25:
        return [obj.primary, obj.secondary]
    return [obj.primary]


def _attention(obj: _Object, obj_box, person_box, facing: int, rng: np.random.Generator) -> list[str]:
    """Mostly 'looking_at' for held objects and objects on the side the person faces."""
    if rng.random() < 0.04:
        return ["unsure"]
    in_view = obj.mode == "held" or ((obj_box[0] + obj_box[2]) - (person_box[0] + person_box[2])) * facing > 0
    p_look = 0.85 if in_view else 0.12
    return ["looking_at" if rng.random() < p_look else "not_looking_at"]


# ---------------------------------------------------------------------------------------- drawing
def _class_colour(index: int) -> tuple[int, int, int]:
    hue = (index * 0.61803398875) % 1.0
    sat = 0.55 + 0.35 * ((index * 7) % 5) / 4
    val = 0.6 + 0.35 * ((index * 3) % 4) / 3
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return (int(r * 255), int(g * 255), int(b * 255))


def _pixel_box(box) -> tuple[int, int, int, int]:
    return tuple(int(math.floor(v + 0.5)) for v in box)  # type: ignore[return-value]


def _draw_object(image: np.ndarray, box, class_index: int) -> None:
    x1, y1, x2, y2 = _pixel_box(box)
    if x2 <= x1 or y2 <= y1:
        return
    colour = np.asarray(_class_colour(class_index), dtype=np.int16)
    region = np.broadcast_to(colour, (y2 - y1, x2 - x1, 3)).copy()
    yy, xx = np.mgrid[y1:y2, x1:x2]
    period = 2 + (class_index // 4) % 3
    pattern = class_index % 4
    if pattern == 1:
        mask = (yy // period) % 2 == 0
    elif pattern == 2:
        mask = (xx // period) % 2 == 0
    elif pattern == 3:
        mask = ((yy // period) + (xx // period)) % 2 == 0
    else:
        mask = np.zeros(yy.shape, dtype=bool)
    region[mask] = (region[mask] * 0.6).astype(np.int16)
    region[[0, -1], :] = region[[0, -1], :] // 2
    region[:, [0, -1]] = region[:, [0, -1]] // 2
    image[y1:y2, x1:x2] = region.astype(np.uint8)


def _draw_person(image: np.ndarray, box, facing: int) -> None:
    x1, y1, x2, y2 = _pixel_box(box)
    head_h = max((y2 - y1) // 5, 2)
    image[y1 + head_h:y2, x1:x2] = (40, 70, 150)
    hx1, hx2 = x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4
    image[y1:y1 + head_h, hx1:hx2] = (235, 195, 160)
    eye_x = hx2 - 3 if facing > 0 else hx1 + 1
    eye_y = y1 + head_h // 3
    image[eye_y:eye_y + 2, eye_x:eye_x + 2] = (20, 20, 20)


def _draw_frame(size, background, person_box, facing, objects, boxes) -> np.ndarray:
    """Background, then objects behind the person, the person, objects in front."""
    width, height = size
    shade = 1.0 - 0.25 * np.arange(height, dtype=np.float64)[:, None] / height
    image = (np.asarray(background, dtype=np.float64)[None, None, :] * shade[:, :, None]).astype(np.uint8)
    image = np.broadcast_to(image, (height, width, 3)).copy()
    layers = [(False, obj, box) for obj, box in zip(objects, boxes) if box is not None and not obj.front]
    front = [(True, obj, box) for obj, box in zip(objects, boxes) if box is not None and obj.front]
    for _, obj, box in layers:
        _draw_object(image, box, OBJECT_CLASSES.index(obj.cls))
    if person_box is not None:
        _draw_person(image, person_box, facing)
    for _, obj, box in front:
        _draw_object(image, box, OBJECT_CLASSES.index(obj.cls))
    return image


# ---------------------------------------------------------------------------------------- videos
def _video_ids(rng: np.random.Generator, count: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        name = "".join(_ID_ALPHABET[i] for i in rng.integers(0, len(_ID_ALPHABET), size=5))
        if name not in ids:
            ids.append(name)
    return ids


def _frame_numbers(rng: np.random.Generator, count: int) -> list[int]:
    start = int(rng.integers(1, 40))
    steps = rng.integers(5, 30, size=count)
    return [start + int(s) for s in np.cumsum(steps) - steps[0]]


def _person_entry(rng: np.random.Generator, box, size) -> dict[str, Any]:
    if box is None:
        return {"bbox": np.zeros((0, 4), np.float32), "bbox_score": np.zeros((0,), np.float32),
                "bbox_size": tuple(size), "bbox_mode": "xyxy",
                "keypoints": np.zeros((0, 17, 3), np.float32), "keypoints_logits": np.zeros((0, 17), np.float32)}
    x1, y1, x2, y2 = box
    keypoints = [[_r1(x1 + fx * (x2 - x1)), _r1(y1 + fy * (y2 - y1)), 1.0] for fx, fy in _KEYPOINTS_REL]
    logits = [round(float(v), 3) for v in rng.uniform(1.0, 8.0, size=17)]
    return {"bbox": np.asarray([box], np.float32), "bbox_score": np.asarray([round(float(rng.uniform(0.9, 1.0)), 4)], np.float32),
            "bbox_size": tuple(size), "bbox_mode": "xyxy",
            "keypoints": np.asarray([keypoints], np.float32), "keypoints_logits": np.asarray([logits], np.float32)}


def _object_entry(obj: _Object, video: str, frame_stem: str, split: str, box, relations) -> dict[str, Any]:
    tag = f"{video}/{obj.cls.replace('/', '_')}/{frame_stem}"
    entry: dict[str, Any] = {"class": obj.cls, "bbox": None, "attention_relationship": None,
                             "spatial_relationship": None, "contacting_relationship": None,
                             "metadata": {"tag": tag, "set": split}, "visible": box is not None}
    if box is not None:
        x1, y1, x2, y2 = box
        entry["bbox"] = (x1, y1, _r1(x2 - x1), _r1(y2 - y1))
        entry.update(relations)
    return entry


def _visible_boxes(raws, size, rng: np.random.Generator, hidden_frame: bool) -> list:
    """Clipped boxes, None where hidden: mostly out of the image, too thin, or occluded.

    Unless the whole frame is meant to be hidden, the largest in-image object stays visible when
    chance alone would hide them all, so frames without visible objects are the intended ones.
    """
    if hidden_frame:
        return [None] * len(raws)
    clipped = [_clip_box(raw, *size) for raw in raws]
    usable = [_area(box) >= 0.4 * _area(raw) and min(box[2] - box[0], box[3] - box[1]) >= 3
              for raw, box in zip(raws, clipped)]
    occluded = [rng.random() < 0.04 for _ in raws]
    boxes = [box if ok and not hide else None for box, ok, hide in zip(clipped, usable, occluded)]
    if all(b is None for b in boxes) and any(usable):
        best = max((i for i, ok in enumerate(usable) if ok), key=lambda i: _area(clipped[i]))
        boxes[best] = clipped[best]
    return boxes


def _generate_video(rng, name, split, kind, num_frames, num_objects, size, p_no_person, p_no_visible, class_p, draw):
    """Frames of one video: list of (key, person entry, object entries, image or None unless ``draw``)."""
    person = _new_person(rng, size, num_frames)
    class_names = list(CLASS_BEHAVIOURS)
    chosen = rng.choice(len(class_names), size=num_objects, replace=False, p=class_p)
    objects = [_new_object(rng, class_names[int(i)], person, size) for i in chosen]
    background = tuple(int(v) for v in rng.integers(150, 230, size=3))
    frames = []
    for t, number in enumerate(_frame_numbers(rng, num_frames)):
        stem = f"{number:06d}"
        key = f"{name}/{stem}.png"
        no_person = kind == "no_person" or rng.random() < p_no_person
        no_visible = kind == "no_visible" or (kind == "normal" and rng.random() < p_no_visible)
        person_box = person.box(t, size[0])
        facing = person.facing_at(t)
        boxes = _visible_boxes([obj.box(t, person_box, facing, size) for obj in objects], size, rng, no_visible)
        entries = []
        for obj, box in zip(objects, boxes):
            relations = {}
            if box is not None:
                relations = {"attention_relationship": _attention(obj, box, person_box, facing, rng),
                             "spatial_relationship": _spatial(box, person_box, obj.front),
                             "contacting_relationship": _contacting(obj, box, person_box, rng)}
            entries.append(_object_entry(obj, name, stem, split, box, relations))
        drawn_person = None if no_person else person_box
        image = _draw_frame(size, background, drawn_person, facing, objects, boxes) if draw else None
        frames.append((key, _person_entry(rng, drawn_person, size), entries, image))
    return frames


def _plan_videos(rng, num_videos, test_fraction, frames_per_video, objects_per_video, edge_case_videos):
    num_test = int(round(num_videos * test_fraction))
    splits = ["test"] * num_test + ["train"] * (num_videos - num_test)
    splits = [splits[i] for i in rng.permutation(num_videos)]
    plans = [("normal", s, int(rng.integers(frames_per_video[0], frames_per_video[1] + 1)),
              int(rng.integers(objects_per_video[0], objects_per_video[1] + 1))) for s in splits]
    if edge_case_videos:
        frames = {"one_frame": 1, "two_frames": 2, "no_person": 4, "no_visible": 3}
        for split in ("train", "test"):
            for kind in _EDGE_KINDS:
                plans.append((kind, split, frames[kind], int(rng.integers(1, 3))))
    return plans


def _check_args(num_videos, frames_per_video, image_size, test_fraction, objects_per_video, p_no_person, p_no_visible):
    if not isinstance(num_videos, int) or num_videos < 0:
        raise ValueError(f"num_videos must be a non-negative int, got {num_videos!r}")
    for name, pair, low in (("frames_per_video", frames_per_video, 1), ("objects_per_video", objects_per_video, 1)):
        if len(pair) != 2 or not low <= pair[0] <= pair[1]:
            raise ValueError(f"{name} must be (min, max) with {low} <= min <= max, got {pair!r}")
    if objects_per_video[1] > len(CLASS_BEHAVIOURS):
        raise ValueError(f"objects_per_video max must be <= {len(CLASS_BEHAVIOURS)} (one object per class)")
    if len(image_size) != 2 or min(image_size) < 32:
        raise ValueError(f"image_size must be (width, height) with both >= 32, got {image_size!r}")
    for name, value in (("test_fraction", test_fraction), ("p_no_person", p_no_person), ("p_no_visible", p_no_visible)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _prepare_root(root: pathlib.Path, overwrite: bool) -> None:
    owned = [root / "annotations", root / "frames"]
    if any(p.exists() for p in owned):
        if not overwrite:
            raise FileExistsError(f"{root} already holds annotations/ or frames/; pass overwrite=True to replace them")
        for path in owned:
            if path.exists():
                shutil.rmtree(path)
    (root / "annotations").mkdir(parents=True, exist_ok=True)


def _write_pickle(path: pathlib.Path, data: Any, protocol: int) -> None:
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)


def generate_synthetic_ag(root: str | os.PathLike, num_videos: int = 18, frames_per_video: tuple[int, int] = (6, 10),
                         seed: int = 0, image_size: tuple[int, int] = (128, 96), *, test_fraction: float = 1 / 3,
                         objects_per_video: tuple[int, int] = (1, 5), p_no_person: float = 0.05,
                         p_no_visible: float = 0.05, edge_case_videos: bool = True, small_box_edge: float = 16.0,
                         write_frames: bool = True, write_filtersmall: bool = True, pickle_protocol: int = 4,
                         overwrite: bool = False) -> SyntheticAG:
    """Write a synthetic AG dataset under ``root`` and return what was written.

    ``num_videos`` normal videos (``round(num_videos * test_fraction)`` of them test) with
    ``frames_per_video`` frames and ``objects_per_video`` objects each (both inclusive ranges),
    plus, with ``edge_case_videos``, per split a one-frame, a two-frame, a no-person and a
    no-visible-object video. ``image_size`` is (width, height) in pixels. Each normal frame lacks
    its person box with probability ``p_no_person`` and all its objects with ``p_no_visible``.
    ``small_box_edge`` is the filtersmall rule (a box stays visible iff its short side exceeds it).
    Frames are written as RGB PNGs unless ``write_frames`` is False. Raises ``FileExistsError``
    when ``root`` already has ``annotations/`` or ``frames/`` and ``overwrite`` is False.
    """
    size = (int(image_size[0]), int(image_size[1]))
    frames_per_video = tuple(int(v) for v in frames_per_video)
    objects_per_video = tuple(int(v) for v in objects_per_video)
    _check_args(num_videos, frames_per_video, size, test_fraction, objects_per_video, p_no_person, p_no_visible)
    root = pathlib.Path(root)
    _prepare_root(root, overwrite)
    config = dict(num_videos=num_videos, frames_per_video=frames_per_video, seed=seed, image_size=size,
                  test_fraction=test_fraction, objects_per_video=objects_per_video, p_no_person=p_no_person,
                  p_no_visible=p_no_visible, edge_case_videos=edge_case_videos, small_box_edge=small_box_edge,
                  pickle_protocol=pickle_protocol)
    rng = np.random.default_rng(seed)
    weights = np.asarray([b.weight for b in CLASS_BEHAVIOURS.values()], dtype=np.float64)
    class_p = weights / weights.sum()
    plans = _plan_videos(rng, num_videos, test_fraction, frames_per_video, objects_per_video, edge_case_videos)
    names = [f"{i}.mp4" for i in _video_ids(rng, len(plans))]
    person_bbox, object_bbox, videos = {}, {}, []
    for name, (kind, split, num_frames, num_objects) in zip(names, plans):
        frames = _generate_video(rng, name, split, kind, num_frames, num_objects, size,
                                 p_no_person if kind == "normal" else 0.0, p_no_visible, class_p, write_frames)
        videos.append(SyntheticVideo(name, split, kind, [f[0] for f in frames]))
        for key, person_entry, entries, image in frames:
            person_bbox[key] = person_entry
            object_bbox[key] = entries
            if write_frames:
                path = root / "frames" / key
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image, "RGB").save(path, format="PNG", optimize=True)
    person_bbox = {k: person_bbox[k] for k in sorted(person_bbox)}
    shuffled = list(object_bbox)
    object_bbox = {shuffled[i]: object_bbox[shuffled[i]] for i in rng.permutation(len(shuffled))}
    _write_annotations(root, person_bbox, object_bbox, write_filtersmall, small_box_edge, pickle_protocol)
    summary = SyntheticAG(root, sorted(videos, key=lambda v: v.name), config)
    manifest = {"generator": "fremure.data.synthetic", "config": config,
                "videos": [asdict(v) for v in summary.videos]}
    (root / "synthetic_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return summary


def _write_annotations(root, person_bbox, object_bbox, write_filtersmall, small_box_edge, protocol) -> None:
    ann = root / "annotations"
    objects, relations = raw_class_lines()
    (ann / "object_classes.txt").write_text("\n".join(objects) + "\n", encoding="utf-8")
    (ann / "relationship_classes.txt").write_text("\n".join(relations) + "\n", encoding="utf-8")
    _write_pickle(ann / "person_bbox.pkl", person_bbox, protocol)
    _write_pickle(ann / "object_bbox_and_relationship.pkl", object_bbox, protocol)
    if write_filtersmall:
        _write_pickle(ann / FILTERSMALL_NAME, filter_small_boxes(object_bbox, small_box_edge), protocol)


# ---------------------------------------------------------------------------------------- sample
def sample_path() -> pathlib.Path:
    """The bundled tiny synthetic AG (``SAMPLE_CONFIG``: 128x96 frames, 12 train / 6 test normal
    videos of 6-10 frames plus edge-case videos), usable as ``data_path``."""
    path = pathlib.Path(__file__).resolve().parent / "sample"
    if not (path / "annotations" / "person_bbox.pkl").is_file():
        raise FileNotFoundError(f"bundled sample missing at {path}; regenerate it with "
                                "`python -m fremure.data.synthetic --sample --out DIR`")
    return path


def write_sample(root: str | os.PathLike, overwrite: bool = False) -> SyntheticAG:
    """Generate the bundled sample (``SAMPLE_CONFIG``) under ``root``."""
    return generate_synthetic_ag(root, overwrite=overwrite, **SAMPLE_CONFIG)


# ---------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fremure.data.synthetic",
                                description="Write a synthetic Action Genome dataset in AG's on-disk format.")
    p.add_argument("--out", required=True, help="dataset root (gets annotations/ and frames/)")
    p.add_argument("--sample", action="store_true", help="use the bundled sample's settings (ignores the size options)")
    p.add_argument("--videos", type=int, default=18, help="normal videos (default 18)")
    p.add_argument("--frames", type=int, nargs=2, default=(6, 10), metavar=("MIN", "MAX"))
    p.add_argument("--objects", type=int, nargs=2, default=(1, 5), metavar=("MIN", "MAX"))
    p.add_argument("--size", type=int, nargs=2, default=(128, 96), metavar=("W", "H"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=1 / 3)
    p.add_argument("--no-edge-cases", action="store_true", help="omit the per-split edge-case videos")
    p.add_argument("--no-frames", action="store_true", help="write annotations only")
    p.add_argument("--no-filtersmall", action="store_true", help="do not write the filtersmall pickle")
    p.add_argument("--overwrite", action="store_true", help="replace existing annotations/ and frames/")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m fremure.data.synthetic --out DIR [options]``."""
    args = _parser().parse_args(argv)
    if args.sample:
        result = write_sample(args.out, overwrite=args.overwrite)
    else:
        result = generate_synthetic_ag(args.out, args.videos, tuple(args.frames), args.seed, tuple(args.size),
                                       test_fraction=args.test_fraction, objects_per_video=tuple(args.objects),
                                       edge_case_videos=not args.no_edge_cases, write_frames=not args.no_frames,
                                       write_filtersmall=not args.no_filtersmall, overwrite=args.overwrite)
    frames = sum(len(v.frame_keys) for v in result.videos)
    print(f"wrote {len(result.videos)} videos ({len(result.video_names('train'))} train, "
          f"{len(result.video_names('test'))} test), {frames} frames to {result.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
