"""The scene graph of one frame, as ``fremure predict`` and :class:`fremure.Predictor` return it.

The JSON form (``SceneGraph.to_dict()``, one line per frame in ``NAME.jsonl``) is versioned by
``schema`` and documented in docs/predict.md. Boxes are ``[x1, y1, x2, y2]`` in the input frame's
pixels. A relation's ``score`` is the evaluator's ranking key, ``subject score * object score *
predicate score`` (docs/ag_and_eval.md); ``predicate_score`` is the model's probability alone.
Attention and contacting relations go from the person to the object, spatial ones from the object
to the person ("cup in_front_of person"), as the evaluator counts them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One box: ``index`` (its place in ``SceneGraph.objects``, which relations refer to), ``box``
    ``(x1, y1, x2, y2)`` float pixels, ``label`` (AG class index, 1 = person), ``name``, ``score``
    and ``track`` (the model's track id when it tracks objects, else None)."""

    index: int
    box: tuple[float, float, float, float]
    label: int
    name: str
    score: float
    track: int | None = None


@dataclasses.dataclass(frozen=True)
class Relation:
    """One triplet: ``subject`` and ``object`` index ``SceneGraph.objects``; ``type`` is attention,
    spatial or contacting; ``predicate`` the AG predicate index (0..25) and ``name`` its name."""

    subject: int
    object: int
    type: str
    predicate: int
    name: str
    score: float
    predicate_score: float


@dataclasses.dataclass(frozen=True)
class SceneGraph:
    """The objects and ranked relations of one frame: ``frame`` is its 1-based position in the
    video (or in the list of frames given), ``time`` its timestamp in seconds (None when unknown),
    ``width`` x ``height`` the frame size."""

    frame: int
    time: float | None
    width: int
    height: int
    objects: tuple[SceneObject, ...]
    relations: tuple[Relation, ...]

    def triplets(self) -> list[tuple[str, str, str, float]]:
        """``(subject name, predicate name, object name, score)`` in rank order."""
        return [(self.objects[r.subject].name, r.name, self.objects[r.object].name, r.score) for r in self.relations]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (docs/predict.md): plain dicts, lists, numbers and strings."""
        return {"schema": SCHEMA_VERSION, "frame": self.frame, "time": self.time, "width": self.width,
                "height": self.height, "objects": [_object_dict(o) for o in self.objects],
                "relations": [dataclasses.asdict(r) for r in self.relations]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SceneGraph":
        """Reads ``to_dict()``'s form; ValueError for another schema version."""
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"scene graph schema must be {SCHEMA_VERSION}, got {data.get('schema')!r}")
        objects = tuple(SceneObject(**{**o, "box": tuple(o["box"])}) for o in data["objects"])
        relations = tuple(Relation(**r) for r in data["relations"])
        return cls(data["frame"], data["time"], data["width"], data["height"], objects, relations)


def _object_dict(obj: SceneObject) -> dict[str, Any]:
    out = dataclasses.asdict(obj)
    out["box"] = list(obj.box)
    return out
