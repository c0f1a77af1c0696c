"""Benchmark the evaluator: frames per second on a synthetic test split, all three graph constraints.

Providers (every one computes R@K, mR@K and per-predicate recall for with / semi / no):
- ``loop``:  benchmarks/baseline_eval_loop.py, the straightforward frame-by-frame, triplet-by-triplet
  Python implementation (one evaluator per constraint);
- ``ours``:  three ``fremure.eval.SceneGraphEvaluator`` used as drop-in replacements (each converts
  the reference-format inputs itself, as test.py's three evaluators would);
- ``ours-multi``: ``fremure.eval.MultiConstraintEvaluator`` (inputs converted once for the three).

The script asserts that every provider gives exactly the same numbers, then reports the best of
``--reps`` runs as frames/s and speed-up over ``loop``, in CPU time of this process (robust on a
shared machine) and in wall time. Rows go to benchmarks/results/eval_<mode>_<objects>obj_cpu.csv.

    PYTHONPATH=python python3 benchmarks/bench_eval.py [--videos 100] [--mode predcls] [--objects 6] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import platform
import sys
import time
from typing import Any, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from baseline_eval_loop import LoopEvaluator  # noqa: E402
from eval_synthetic import make_split  # noqa: E402

from fremure.eval import MultiConstraintEvaluator, SceneGraphEvaluator  # noqa: E402

CONSTRAINTS = ("with", "semi", "no")
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def run_separate(cls: type, mode: str, split: list, constraints: tuple[str, ...]) -> dict[str, Any]:
    """One evaluator per constraint, every video added to each; returns {constraint: summary}."""
    evaluators = {c: cls(mode, c) for c in constraints}
    for gt_annotation, pred in split:
        for evaluator in evaluators.values():
            evaluator.add_video(gt_annotation, pred)
    return {c: evaluator.summary() for c, evaluator in evaluators.items()}


def run_multi(mode: str, split: list, constraints: tuple[str, ...]) -> dict[str, Any]:
    evaluator = MultiConstraintEvaluator(mode, constraints)
    for gt_annotation, pred in split:
        evaluator.add_video(gt_annotation, pred)
    return evaluator.summary()


def best_time(fn: Callable[[], Any], reps: int) -> tuple[float, float, Any]:
    """Best CPU seconds and best wall seconds over ``reps`` runs, and the last result."""
    cpu = wall = float("inf")
    result = None
    for _ in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        result = fn()
        cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
    return cpu, wall, result


def assert_same(reference: dict[str, Any], other: dict[str, Any], name: str) -> None:
    for constraint, summary in reference.items():
        for key in ("R", "mR", "per_predicate"):
            if summary[key] != other[constraint][key]:
                raise AssertionError(f"{name}: {constraint} {key} differs from the loop baseline:\n"
                                     f"{summary[key]}\n{other[constraint][key]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--mode", default="predcls", choices=["predcls", "sgcls", "sgdet"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objects", type=float, default=6.0, help="mean visible objects per frame")
    parser.add_argument("--quick", action="store_true", help="10 videos, 1 repetition (smoke test)")
    args = parser.parse_args()
    videos, reps = (10, 1) if args.quick else (args.videos, args.reps)

    split = make_split(videos, args.mode, seed=args.seed, objects_per_frame=args.objects)
    frames = sum(len(gt) for gt, _ in split)
    objects = sum(len(frame) - 1 for gt, _ in split for frame in gt)
    pairs = sum(int(pred["pair_idx"].shape[0]) for _, pred in split)
    device = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    print(f"synthetic {args.mode} split: {videos} videos, {frames} frames, {objects / frames:.2f} objects and "
          f"{pairs / frames:.2f} pairs per frame; {device}")

    cases = [(c, (c,)) for c in CONSTRAINTS] + [("all three", CONSTRAINTS)]
    rows = []
    print(f"{'constraints':12s} {'provider':11s} {'frames/s (cpu)':>15s} {'x loop':>7s} "
          f"{'frames/s (wall)':>16s} {'x loop':>7s}")
    for label, constraints in cases:
        providers: list[tuple[str, Callable[[], Any]]] = [
            ("loop", lambda c=constraints: run_separate(LoopEvaluator, args.mode, split, c)),
            ("ours", lambda c=constraints: run_separate(SceneGraphEvaluator, args.mode, split, c)),
        ]
        if len(constraints) > 1:
            providers.append(("ours-multi", lambda c=constraints: run_multi(args.mode, split, c)))
        base_cpu = base_wall = None
        reference = None
        for name, fn in providers:
            cpu, wall, result = best_time(fn, reps)
            if reference is None:
                reference, base_cpu, base_wall = result, cpu, wall
            else:
                assert_same(reference, result, name)
            row = dict(mode=args.mode, constraints=label, provider=name, videos=videos, frames=frames,
                       objects_per_frame=round(objects / frames, 2),
                       frames_per_s_cpu=frames / cpu, speedup_cpu=base_cpu / cpu,
                       frames_per_s_wall=frames / wall, speedup_wall=base_wall / wall, device=device)
            rows.append(row)
            print(f"{label:12s} {name:11s} {row['frames_per_s_cpu']:15.0f} {row['speedup_cpu']:7.1f} "
                  f"{row['frames_per_s_wall']:16.0f} {row['speedup_wall']:7.1f}", flush=True)
    print("all providers agree exactly (R@K, mR@K, per-predicate recall)")
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"eval_{args.mode}_{args.objects:g}obj_cpu.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print("wrote", path)


if __name__ == "__main__":
    main()
