"""``fremure check-data``: is an Action Genome folder complete for the tasks to be run?

Checks the annotation files each task reads (the filtersmall pickle only for SGCls/SGDet, as
:func:`fremure.data.ag.annotation_paths`), that the class lists have AG's line counts, that the
pickles load (restricted unpickler) and hold usable entries (the loader's own validation: types,
keys, box shapes; a split without a usable video is a problem, dropped entries are counted), and
how many annotated frames exist under ``frames/`` as whole PNG files (header and end checked).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import pickle
from typing import Sequence

from .ag import OBJECT_CLASSES, RELATIONSHIP_CLASSES, ActionGenome, annotation_paths
from .frames import annotated_frames, frame_name, missing_frames

MODES = ("predcls", "sgcls", "sgdet")


@dataclasses.dataclass
class CheckItem:
    """One line of the report: what was checked, whether it is fine, and why not."""

    name: str
    ok: bool
    detail: str
    needed_by: tuple[str, ...] = MODES

    def __str__(self) -> str:
        tag = "ok     " if self.ok else "MISSING" if "not found" in self.detail else "BAD    "
        needed = "" if self.ok or self.needed_by == MODES else f" (needed by {', '.join(self.needed_by)})"
        return f"{tag} {self.name}: {self.detail}{needed}"


def _line_count(path: pathlib.Path) -> int:
    """Lines as the loader counts them (``readlines``)."""
    with open(path, encoding="utf-8") as handle:
        return len(handle.readlines())


def check_data(data_path: str | os.PathLike, modes: Sequence[str] = MODES, max_listed: int = 10) -> list[CheckItem]:
    """Report items for ``data_path``; an item with ``ok=False`` is something the given ``modes`` need."""
    root = pathlib.Path(data_path)
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"modes must be among {MODES}, got {sorted(unknown)}")
    items = []
    plain = annotation_paths(root, filter_small_box=False)
    small = annotation_paths(root, filter_small_box=True)["object_bbox"]
    files = [("object_classes", plain["object_classes"], MODES, len(OBJECT_CLASSES) - 1),
             ("relationship_classes", plain["relationship_classes"], MODES, len(RELATIONSHIP_CLASSES)),
             ("person_bbox", plain["person_bbox"], MODES, None),
             ("object_bbox", plain["object_bbox"], ("predcls",), None),
             ("object_bbox_filtersmall", small, ("sgcls", "sgdet"), None)]
    for _, path, needed_by, lines in files:
        if not any(m in needed_by for m in modes):
            continue
        relevant = tuple(m for m in needed_by if m in modes)
        if not path.is_file():
            items.append(CheckItem(str(path.relative_to(root)), False, f"not found at {path}", relevant))
            continue
        size = path.stat().st_size
        detail = f"{size / 2 ** 20:.1f} MiB" if size > 2 ** 20 else f"{size} bytes"
        if lines is not None:
            count = _line_count(path)
            if count != lines:
                items.append(CheckItem(str(path.relative_to(root)), False,
                                       f"{count} lines, AG's file has {lines}", relevant))
                continue
            detail += f", {lines} lines"
        items.append(CheckItem(str(path.relative_to(root)), True, detail, relevant))
    if all(item.ok for item in items):
        items += annotation_items(root, modes)
    items.append(_frame_coverage(root, max_listed))
    return items


def annotation_items(root: str | os.PathLike, modes: Sequence[str] = MODES) -> list[CheckItem]:
    """One item per split and object pickle the ``modes`` read: the loader's own result (the files
    must exist; ``check_data`` checks that first)."""
    root = pathlib.Path(root)
    items = []
    variants = [(False, ("predcls",)), (True, ("sgcls", "sgdet"))]
    for filter_small, needed_by in variants:
        relevant = tuple(m for m in needed_by if m in modes)
        if not relevant:
            continue
        for split in ("train", "test"):
            name = f"annotations ({split}, {'filtersmall' if filter_small else 'full'} object pickle)"
            items.append(_split_item(root, split, filter_small, name, relevant))
    return items


def _split_item(root: pathlib.Path, split: str, filter_small: bool, name: str, needed_by: tuple[str, ...]) -> CheckItem:
    try:
        dataset = ActionGenome(root, split, filter_small_box=filter_small)
    except (pickle.UnpicklingError, TypeError, ValueError, OSError) as err:
        return CheckItem(name, False, f"cannot be loaded: {err}", needed_by)
    dropped = dataset.dropped_text()
    detail = f"{len(dataset)} videos" + (f"; {dropped}" if dropped else "")
    return CheckItem(name, len(dataset) > 0, detail if len(dataset) else f"no usable video; {detail}", needed_by)


def _frame_coverage(root: pathlib.Path, max_listed: int) -> CheckItem:
    try:
        wanted, source = annotated_frames(root)
    except (FileNotFoundError, ValueError) as err:
        return CheckItem("frames/", False, f"cannot list the annotated frames: {err}")
    absent = missing_frames(root / "frames", wanted)
    total = sum(len(v) for v in wanted.values())
    lost = sum(len(v) for v in absent.values())
    detail = (f"{total - lost} of {total} annotated frames present ({len(wanted)} videos, list from "
              f"{source.name})")
    if not absent:
        return CheckItem("frames/", True, detail)
    examples = [f"{video}/{frame_name(numbers[0])}" for video, numbers in list(absent.items())[:max_listed]]
    detail += f"; {lost} missing in {len(absent)} videos, e.g. {', '.join(examples)} (run fremure frames)"
    return CheckItem("frames/", False, detail)
