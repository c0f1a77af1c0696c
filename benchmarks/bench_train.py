"""Training throughput (videos/s) on the synthetic AG sample: entries read from the feature cache
vs the detector re-run on every video of every epoch (the published train.py's approach).

Model: FReMuRe PredCls, 1 decoder layer, no unused modules, no memory (the per-step work is the
same for both sources; only where the entry comes from differs). The detector has random weights
and runs at the sample's native 96-px frame height. Writes benchmarks/results/train_cpu.csv (train_cuda.csv with --device cuda).

    PYTHONPATH=python python3 benchmarks/bench_train.py [--videos 4] [--epochs 1]
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
    parser.add_argument("--device", default="cpu", help="cpu or cuda (detector and model on that device)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        rows = train_throughput(None, work, videos=args.videos, steps=args.epochs, device=args.device)
    load = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    cuda = args.device.startswith("cuda")
    path = RESULTS / ("train_cuda.csv" if cuda else "train_cpu.csv")
    device_name = torch.cuda.get_device_name() if cuda else platform.machine()
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["device", "threads", "load_average", "source", "videos", "seconds", "videos_per_s"])
        for row in rows:
            writer.writerow([device_name, args.threads, f"{load:.1f}", row["source"], row["videos"],
                             f"{row['seconds']:.2f}", f"{row['videos_per_s']:.3f}"])
            print(f"{row['source']:>9}: {row['videos_per_s']:.3f} videos/s ({row['seconds']:.1f} s, {row['videos']} videos)")
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
