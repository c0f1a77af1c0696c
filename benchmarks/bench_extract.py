"""Feature-extraction throughput of the frozen AG detector (random weights), in frames per second.

For each mode/phase it times ``build_entry`` on a synthetic video (after one warm-up run), and
separately the frame loading (PNG decode + mean subtraction + OpenCV-style resize + padding).
AG frames are 480x270 and are resized to a 1067x600 blob; ``--frame``/``--target`` choose
smaller sizes for a quick run. Results are appended to ``benchmarks/results/extract_<device>.csv`` (with the machine's load average:
on a shared CPU, timings depend on it).

    python benchmarks/bench_extract.py --frame 270x480 --target 600 --frames 4
    python benchmarks/bench_extract.py --frame 135x240 --target 300 --frames 10 --modes predcls,sgdet
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "python"))

from fremure.data.detector import AGFasterRCNN, DetectorConfig, randomize_detector_  # noqa: E402
from fremure.data.features import build_entry  # noqa: E402
from fremure.data.images import load_video_blob  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def random_detector(config: DetectorConfig, device: str) -> AGFasterRCNN:
    """Random weights; classifier biased to a few classes so sgdet keeps detections (as a trained model would)."""
    with torch.device("meta"):
        detector = AGFasterRCNN(config)
    detector = randomize_detector_(detector.to_empty(device="cpu"))
    with torch.no_grad():
        for cls, bias in {1: 4.0, 5: 4.0, 8: 3.5, 32: 3.0}.items():
            detector.cls_score.bias[cls] = bias
    return detector.to(device)


def synthetic_video(root: str, frames: int, height: int, width: int, seed: int = 0):
    """PNG frames with smooth random content and GT with one person and three objects per frame."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "BENCH.mp4"), exist_ok=True)
    paths, gt = [], []
    for t in range(frames):
        coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        pixels = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
        path = os.path.join(root, "BENCH.mp4", f"{t:06d}.png")
        Image.fromarray(pixels).save(path)
        paths.append(path)

        def box():
            x1, y1 = rng.uniform(0, width * 0.6), rng.uniform(0, height * 0.6)
            return np.array([x1, y1, x1 + rng.uniform(20, width * 0.4), y1 + rng.uniform(20, height * 0.4)])

        frame = [{"person_bbox": box().astype(np.float32)[None], "frame": f"BENCH.mp4/{t:06d}.png"}]
        for _ in range(3):
            frame.append({"class": int(rng.integers(2, 37)), "bbox": box(), "attention_relationship": [0],
                          "spatial_relationship": [1, 2], "contacting_relationship": [8]})
        gt.append(frame)
    return paths, gt


def median_time(fn, repeats: int, sync) -> float:
    fn()                                             # warm-up: kernel selection, allocator
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", default="270x480", help="frame size HxW (AG: 270x480)")
    parser.add_argument("--target", type=int, default=600, help="short side after resizing (reference: 600)")
    parser.add_argument("--frames", type=int, default=4, help="frames in the synthetic video")
    parser.add_argument("--modes", default="predcls,sgcls,sgdet")
    parser.add_argument("--phases", default="test,train")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--fold", action="store_true", help="fold the frozen batch-norms into the convolutions")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.frame.lower().split("x"))
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    detector = random_detector(DetectorConfig(target_size=args.target), device)
    if args.fold:
        detector.fold_batchnorm_()
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"

    rows = []
    with tempfile.TemporaryDirectory() as root:
        paths, gt = synthetic_video(root, args.frames, height, width)
        load_s = median_time(lambda: load_video_blob(paths, args.target), args.repeats, lambda: None)
        images, im_info = load_video_blob(paths, args.target)
        blob = f"{images.shape[2]}x{images.shape[3]}"
        print(f"device: {name}; frames {height}x{width} -> blob {blob}; {args.frames} frames per video; "
              f"batch-norm {'folded' if args.fold else 'separate'}")
        print(f"{'load+preprocess':<22} {load_s:8.3f} s  {args.frames / load_s:8.2f} frames/s")
        rows.append(["load", "-", load_s])
        images, im_info = images.to(device), im_info.to(device)
        for mode in args.modes.split(","):
            for phase in args.phases.split(","):
                training = phase == "train"
                if mode == "predcls" and not training and "train" in args.phases:
                    continue                             # predcls entries are the same in both phases
                seconds = median_time(lambda: build_entry(detector, images, im_info, gt, mode, training),
                                      args.repeats, sync)
                label = f"{mode} {phase}"
                print(f"{label:<22} {seconds:8.3f} s  {args.frames / seconds:8.2f} frames/s")
                rows.append([mode, phase, seconds])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"extract_{'cuda' if device.startswith('cuda') else 'cpu'}.csv"
    new_file = not out.exists()
    load_average = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    with open(out, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(["device", "threads", "load_average", "frame", "blob", "frames", "bn_folded", "mode",
                             "phase", "seconds", "frames_per_s"])
        for mode, phase, seconds in rows:
            writer.writerow([name, torch.get_num_threads(), load_average, f"{height}x{width}", blob, args.frames,
                             int(args.fold), mode, phase, f"{seconds:.4f}", f"{args.frames / seconds:.3f}"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
