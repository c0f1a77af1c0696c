"""Training throughput of ``torchrun --nproc_per_node=N -m fremure train`` for several N on CPU (gloo).

Every run trains the same videos with the same ``--videos-per-step`` (a multiple of every N), each
process with ``--threads-total / N`` threads, and reports the training seconds of its epochs (from
history.jsonl: steps only, without validation and memory rebuild), videos/s and the speed-up over
N = 1; writes benchmarks/results/ddp_cpu.csv.

    PYTHONPATH=python python3 benchmarks/bench_ddp.py --data-path AG_OR_SAMPLE --train-cache C1 \\
        --test-cache C2 [--nprocs 1 2] [--videos 12] [--videos-per-step 2] [--epochs 1] [--threads-total 2]

Caches come from ``fremure extract`` (e.g. of the bundled sample, ``fremure.data.synthetic.sample_path()``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(nproc: int, args: argparse.Namespace, work: str) -> dict:
    save = os.path.join(work, f"n{nproc}")
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, args.threads_total // nproc)),
               PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "fremure", "train", "--data-path", args.data_path, "--train-cache", args.train_cache,
               "--test-cache", args.test_cache, "--save-path", save, "--nepoch", str(args.epochs),
               "--max-train-videos", str(args.videos), "--max-test-videos", "1",
               "--videos-per-step", str(args.videos_per_step), "--dec-layer", str(args.dec_layer),
               "--checkpoints", "none", "--progress", "false", "--tensorboard", "false"]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    history = [json.loads(line) for line in pathlib.Path(save, "history.jsonl").read_text().splitlines()]
    seconds = sum(record["seconds"] for record in history)
    return {"nproc": nproc, "threads_per_process": max(1, args.threads_total // nproc), "videos": args.videos,
            "epochs": args.epochs, "videos_per_step": args.videos_per_step, "train_s": round(seconds, 2),
            "videos_per_s": round(args.videos * args.epochs / seconds, 3), "wall_s": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--train-cache", required=True)
    parser.add_argument("--test-cache", required=True)
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--videos-per-step", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dec-layer", type=int, default=3)
    parser.add_argument("--threads-total", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    for n in args.nprocs:
        if args.videos_per_step % n:
            parser.error(f"--videos-per-step {args.videos_per_step} is not a multiple of {n}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fremure-bench-ddp-") as work:
        for n in args.nprocs:
            rows.append(run(n, args, work))
            base = rows[0]["train_s"]
            rows[-1]["speedup"] = round(base / rows[-1]["train_s"], 2)
            print(rows[-1], flush=True)
    out = REPO / "benchmarks" / "results" / "ddp_cpu.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) + ["machine"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "machine": f"{platform.machine()} {os.cpu_count()} cores"})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
