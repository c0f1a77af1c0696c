"""``fremure prepare AG_ROOT``: writes the filtersmall object pickle SGCls/SGDet read, and checks the rest.

The AG download has ``object_bbox_and_relationship.pkl`` but not the
``object_bbox_and_relationship_filtersmall.pkl`` the STTran authors distributed separately. The
published READMEs describe it as keeping "bounding boxes with short edges larger than 16 pixels";
the code that made it is not published. The published loaders read the file in place of the full
object pickle with the same code (docs/ag_and_eval.md 1.6), which fixes what a regenerated file
must look like:

- the same dict, keyed by every frame key of ``person_bbox.pkl`` (the loaders index it with each
  person key and read the split from the first object of the list, so no key may go and no list may
  become empty);
- a removed box is an object marked not visible, with ``bbox`` and the relation lists ``None``, as
  AG marks an object absent from a frame (the loaders skip invisible objects unread);
- only objects are filtered: the person boxes come from ``person_bbox.pkl`` in both variants;
- a frame left without a visible object, and a video left with fewer than 3 frames, are dropped by
  the loader's own rules, not by the file.

The rule applied: a visible object keeps its box iff ``min(w, h) > small_box_edge`` (16) in the
pickle's original pixels, ``(x, y, w, h)``. It is our reading of the README, not a byte copy of the
distributed file: an existing file (e.g. the distributed one) that differs is reported and kept
unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import pickle
import tempfile
from typing import Any, Mapping

import numpy as np

from .ag import FILTERSMALL_NAME, annotation_paths
from .check import CheckItem, annotation_items, check_data
from .safe_pickle import safe_load

SMALL_BOX_EDGE = 16.0
PICKLE_PROTOCOL = 4
# What happened to the filtersmall pickle.
ACTIONS = ("written", "unchanged", "kept", "replaced", "not written")
_HIDDEN = {"visible": False, "bbox": None, "attention_relationship": None, "spatial_relationship": None,
           "contacting_relationship": None}


@dataclasses.dataclass
class PrepareReport:
    """What ``prepare`` checked and did.

    Attributes:
        root: the AG root.
        filtersmall: path of the filtersmall pickle.
        checks: check-data's items (annotation files, both splits with each object pickle, frames).
        action: one of ``ACTIONS``: 'written' (there was none), 'unchanged' (the existing file is what
            the rule gives), 'kept' (an existing file differs and ``overwrite`` was not given),
            'replaced' (it differed and was overwritten), 'not written' (annotations missing or bad).
        objects_visible: visible objects in the full object pickle.
        objects_hidden: of those, the ones the rule marks not visible.
        frames_differing: frame keys whose entries differ between an existing file and the rule.
        existing_error: why an existing filtersmall file could not be read ('' when it could).
        small_box_edge: the rule's edge in pixels.
    """

    root: pathlib.Path
    filtersmall: pathlib.Path
    checks: list[CheckItem] = dataclasses.field(default_factory=list)
    action: str = "not written"
    objects_visible: int = 0
    objects_hidden: int = 0
    frames_differing: int = 0
    existing_error: str = ""
    small_box_edge: float = SMALL_BOX_EDGE

    @property
    def problems(self) -> list[str]:
        """Missing or damaged input (the command's exit code 2 when not empty)."""
        found = [str(item) for item in self.checks if not item.ok]
        if self.existing_error and self.action == "kept":
            found.append(f"BAD     {self.filtersmall.name}: {self.existing_error} (--overwrite replaces it)")
        return found

    @property
    def changed(self) -> bool:
        """Whether the filtersmall pickle was written."""
        return self.action in ("written", "replaced")

    def __str__(self) -> str:
        lines = [str(item) for item in self.checks]
        lines.append(f"{self.filtersmall.name}: {self._action_text()}")
        if self.problems:
            lines.append(f"{self.root}: {len(self.problems)} problem(s), see the lines above")
        else:
            lines.append(f"{self.root}: ready for predcls, sgcls and sgdet")
        return "\n".join(lines)

    def _action_text(self) -> str:
        rule = (f"{self.objects_hidden} of {self.objects_visible} visible objects have a short edge "
                f"<= {self.small_box_edge:g} px and are marked not visible")
        if self.action == "not written":
            return "not written (fix the annotation problems above first)"
        if self.action == "unchanged":
            return f"unchanged, nothing written (already what the rule gives: {rule})"
        why = self.existing_error or f"{self.frames_differing} frames differ from the rule ({rule})"
        if self.action == "kept":
            return f"an existing file differs from the rule and is kept: {why}; --overwrite replaces it"
        return f"{self.action} ({rule})" + (f"; the old file: {why}" if self.action == "replaced" else "")


def filter_small_boxes(objects: Mapping[str, Any], small_box_edge: float = SMALL_BOX_EDGE) -> dict[str, Any]:
    """The filtersmall variant of ``object_bbox_and_relationship.pkl``'s dict (module docstring).

    Args:
        objects: the full object pickle's dict (not modified).
        small_box_edge: a visible object stays visible iff its box's short edge is larger than this.
    Returns:
        A new dict with the same keys and list lengths; entries this rule does not touch (also
        malformed ones, left for the loader to report) are copied unchanged.
    """
    if not isinstance(small_box_edge, (int, float)) or not math.isfinite(small_box_edge) or small_box_edge < 0:
        raise ValueError(f"small_box_edge: expected a finite number >= 0, got {small_box_edge!r}")
    if not isinstance(objects, Mapping):
        raise TypeError(f"objects: expected the object pickle's dict, got {type(objects).__name__}")
    return {key: [_filtered(entry, small_box_edge) for entry in entries] if isinstance(entries, list) else entries
            for key, entries in objects.items()}


def _short_edge(entry: Any) -> float | None:
    """The short edge of a visible object's (x, y, w, h) box; None for anything else."""
    if not isinstance(entry, dict) or entry.get("visible") is not True:
        return None
    try:
        _, _, width, height = (float(v) for v in entry["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    return min(width, height)


def _filtered(entry: Any, edge: float) -> Any:
    short = _short_edge(entry)
    if short is None or short > edge:
        return entry
    return {**entry, **_HIDDEN}


def prepare(ag_root: str | os.PathLike, overwrite: bool = False,
            small_box_edge: float = SMALL_BOX_EDGE) -> PrepareReport:
    """Checks an AG root after ``fremure frames`` and writes its filtersmall pickle.

    Args:
        ag_root: folder holding ``annotations/`` (and ``frames/``).
        overwrite: replace an existing filtersmall pickle that differs from the rule or cannot be read
            (by default it is reported and kept).
        small_box_edge: the rule's edge in pixels (16 as published).
    Returns:
        The report; its ``problems`` list what is missing or damaged. A second run writes nothing.
    """
    root = pathlib.Path(ag_root)
    if not root.is_dir():
        raise NotADirectoryError(f"ag_root: no such directory: {root}")
    target = annotation_paths(root, filter_small_box=True)["object_bbox"]
    report = PrepareReport(root, target, check_data(root, ("predcls",)), small_box_edge=float(small_box_edge))
    if any(not item.ok for item in report.checks if item.name != "frames/"):
        return report
    objects = safe_load(annotation_paths(root)["object_bbox"])
    expected = filter_small_boxes(objects, small_box_edge)
    report.objects_visible = sum(_short_edge(e) is not None for entries in objects.values()
                                 if isinstance(entries, list) for e in entries)
    report.objects_hidden = report.objects_visible - sum(_short_edge(e) is not None for entries in expected.values()
                                                         if isinstance(entries, list) for e in entries)
    report.action = _settle(target, expected, overwrite, report)
    report.checks += annotation_items(root, ("sgcls",))
    return report


def _settle(target: pathlib.Path, expected: dict[str, Any], overwrite: bool, report: PrepareReport) -> str:
    """Compares an existing file with ``expected``, writes when needed; returns the action."""
    if not target.exists():
        write_pickle_atomic(target, expected)
        return "written"
    try:
        existing = safe_load(target)
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError) as err:
        report.existing_error = f"cannot be read ({type(err).__name__}: {err})"
    else:
        report.frames_differing = _frames_differing(existing, expected)
        if report.frames_differing == 0:
            return "unchanged"
    if not overwrite:
        return "kept"
    write_pickle_atomic(target, expected)
    return "replaced"


def _frames_differing(existing: Any, expected: dict[str, Any]) -> int:
    if not isinstance(existing, dict):
        return len(expected)
    keys = set(existing) | set(expected)
    return sum(1 for key in keys if key not in existing or key not in expected
               or not same_content(existing[key], expected[key]))


def same_content(a: Any, b: Any) -> bool:
    """Deep equality of unpickled annotation values (dicts, lists, tuples, numpy arrays, scalars), types included."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and bool(np.array_equal(a, b)))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_content(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_content(x, y) for x, y in zip(a, b))
    return bool(a == b)


def write_pickle_atomic(path: str | os.PathLike, data: Any) -> pathlib.Path:
    """Pickles ``data`` to a temporary file beside ``path`` and renames it over ``path``, so a reader
    never sees a half-written file and an interrupted run leaves the old file (or none)."""
    path = pathlib.Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            pickle.dump(data, out, protocol=PICKLE_PROTOCOL)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
    return path


__all__ = ["ACTIONS", "FILTERSMALL_NAME", "PrepareReport", "SMALL_BOX_EDGE", "filter_small_boxes", "prepare",
           "same_content", "write_pickle_atomic"]
