"""Time the AG annotation loader on a large synthetic AG (annotations only, no frames).

Measures: generating the annotations, ``safe_load`` vs plain ``pickle.load`` of both pickles, a
full ``ActionGenome`` load per split, and the frequency priors; and extrapolates the load time to
AG's 288,782 frame keys. Results go to ``benchmarks/results/ag_loader.csv``.

    PYTHONPATH=python python3 benchmarks/bench_ag_loader.py [--videos 3000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import pickle
import platform
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fremure.data.ag import OBJECT_CLASSES, REL_SLICES, RELATIONSHIP_CLASSES, ActionGenome, annotation_paths  # noqa: E402
from fremure.data.frequency import predicate_frequencies  # noqa: E402
from fremure.data.safe_pickle import safe_load  # noqa: E402
from fremure.data.synthetic import generate_synthetic_ag  # noqa: E402

AG_FRAME_KEYS = 288_782


def _best_of(repeats: int, fn) -> tuple[float, float]:
    """Best wall time and best CPU time (process_time; the shared machine makes wall time noisy)."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def _plain_load(path: pathlib.Path) -> object:
    with open(path, "rb") as f:
        return pickle.load(f)


def _published_style(root: pathlib.Path, mode: str, objects_classes: list, rel: dict) -> int:
    """Baseline: the per-frame/per-object work of the loader algorithm (docs/ag_and_eval.md 1.7) as the published loader
    does it (plain pickle.load, list.index lookups, torch.tensor per label list, in-place updates)."""
    paths = annotation_paths(root)
    person, objects = _plain_load(paths["person_bbox"]), _plain_load(paths["object_bbox"])
    videos: dict[str, list[str]] = {}
    for key in person:
        if objects[key][0]["metadata"]["set"] == mode and any(o["visible"] for o in objects[key]):
            videos.setdefault(key.split("/")[0], []).append(key)
    kept = 0
    for keys in videos.values():
        frames = []
        for key in keys:
            if person[key]["bbox"].shape[0] == 0:
                continue
            frame = [{"person_bbox": person[key]["bbox"], "frame": key}]
            for obj in objects[key]:
                if obj["visible"]:
                    obj["class"] = objects_classes.index(obj["class"])
                    x, y, w, h = obj["bbox"]
                    obj["bbox"] = np.array([x, y, x + w, y + h])
                    for t in ("attention", "spatial", "contacting"):
                        obj[f"{t}_relationship"] = torch.tensor([rel[t].index(r) for r in obj[f"{t}_relationship"]],
                                                                dtype=torch.long)
                    frame.append(obj)
            frames.append(frame)
        kept += len(frames) > 2
    return kept


def _row(step: str, times: tuple[float, float]) -> dict:
    return dict(step=step, seconds=times[0], cpu_seconds=times[1])


def run(root: pathlib.Path, videos: int, repeats: int) -> list[dict]:
    start = time.perf_counter()
    generate_synthetic_ag(root, num_videos=videos, frames_per_video=(10, 40), seed=0,
                          write_frames=False, edge_case_videos=False, overwrite=True)
    rows = [dict(step="generate annotations", seconds=time.perf_counter() - start, cpu_seconds=float("nan"))]
    paths = annotation_paths(root)
    frames = len(safe_load(paths["person_bbox"]))
    for role in ("person_bbox", "object_bbox"):
        size_mb = paths[role].stat().st_size / 2**20
        rows.append(_row(f"pickle.load {paths[role].name} ({size_mb:.1f} MiB)",
                         _best_of(repeats, lambda: _plain_load(paths[role]))))
        rows.append(_row(f"safe_load {paths[role].name}", _best_of(repeats, lambda: safe_load(paths[role]))))
    loaded = {}
    names = list(OBJECT_CLASSES)
    rel = {t: list(RELATIONSHIP_CLASSES[REL_SLICES[t]]) for t in REL_SLICES}
    for mode in ("train", "test"):
        rows.append(_row(f"baseline: published-style loop {mode}",
                         _best_of(repeats, lambda: _published_style(root, mode, names, rel))))
        rows.append(_row(f"ActionGenome {mode}", _best_of(
            repeats, lambda: loaded.__setitem__(mode, ActionGenome(root, mode)))))
    rows.append(_row("predicate_frequencies train+test",
                     _best_of(repeats, lambda: predicate_frequencies(loaded["train"], loaded["test"]))))
    ours = [r for r in rows if r["step"].startswith("ActionGenome")]
    scale = AG_FRAME_KEYS / frames
    rows.append(dict(step=f"extrapolated: both splits of AG ({AG_FRAME_KEYS} keys)",
                     seconds=sum(r["seconds"] for r in ours) * scale, cpu_seconds=sum(r["cpu_seconds"] for r in ours) * scale))
    for row in rows:
        row.update(frame_keys=frames, machine=f"{platform.machine()} {platform.processor() or ''}".strip())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", default=None, help="generate into this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(args.keep or tmp)
        rows = run(root, args.videos, args.repeats)
    out = REPO / "benchmarks" / "results" / "ag_loader.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(f"{row['step']:<64} wall {row['seconds']:8.3f} s  cpu {row['cpu_seconds']:8.3f} s")
    print(f"({rows[0]['frame_keys']} frame keys; written to {out})")


if __name__ == "__main__":
    main()
