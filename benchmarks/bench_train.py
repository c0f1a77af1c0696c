"""Training throughput (videos/s) on the synthetic AG sample: entries read from the feature cache
vs the detector re-run on every video of every epoch (the published train.py's approach).

Model: FReMuRe PredCls, 1 decoder layer, no unused modules, no memory (the per-step work is the
same for both sources; only where the entry comes from differs). The detector has random weights
and runs at the sample's native 96-px frame height. Writes benchmarks/results/train_cpu.csv.

    PYTHONPATH=.:python python3 benchmarks/bench_train.py [--videos 4] [--epochs 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import platform
import tempfile

import torch

from fremure.train.bench import train_throughput

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        rows = train_throughput(None, work, videos=args.videos, steps=args.epochs)
    load = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "train_cpu.csv"
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["device", "threads", "load_average", "source", "videos", "seconds", "videos_per_s"])
        for row in rows:
            writer.writerow([platform.machine(), args.threads, f"{load:.1f}", row["source"], row["videos"],
                             f"{row['seconds']:.2f}", f"{row['videos_per_s']:.3f}"])
            print(f"{row['source']:>9}: {row['videos_per_s']:.3f} videos/s ({row['seconds']:.1f} s, {row['videos']} videos)")
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
