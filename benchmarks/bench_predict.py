"""``fremure predict`` per frame: decode, detector, relation model, at AG resolution.

A synthetic clip of AG's frame size (480 x 270 by default, Charades' 480p at 16:9, as most AG
frames) is encoded with H.264, then predicted as ``fremure predict`` does (one clip per video,
frames taken at ``--every``), timing each phase over ``--rounds`` rounds (median):
- decode: PyAV decode + frame selection (:func:`fremure.predict.read_frames`);
- detector: the AG Faster R-CNN (ResNet-101 C4, short side 600) over the clip in chunks of 10,
  RoI features and class distributions (:func:`fremure.data.features.build_entry`, SGDet);
- model: FReMuRe in its test phase (SGDet, full size D = 1936, published defaults) plus the
  conversion to scene graphs.
The detector's weights are random (no checkpoint is needed to time it; its classifier biases are
set so that the person and ``--objects`` classes are detected, among ``--proposals`` RPN proposals),
so the model sees AG-like pair counts (reported as ``pairs``). Reports ms per frame per phase, the model's
share of the frame time and frames/s; appends to benchmarks/results/predict_<device>.csv.

    PYTHONPATH=python python3 benchmarks/bench_predict.py [--device cuda] [--frames 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import pathlib
import platform
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch

from fremure.data.ag import OBJECT_CLASSES
from fremure.data.features import build_entry
from fremure.data.images import frames_to_blob
from fremure.model.config import ModelConfig, build_model
from fremure.pipeline import make_detector
from fremure.predict import FrameSelection, Predictor, read_frames

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def encode_clip(path: pathlib.Path, frames: int, width: int, height: int, seed: int = 0) -> None:
    """A moving-shapes clip (H.264, 24 fps) with ``frames`` frames."""
    import av
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            image = np.roll(base, 4 * t, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def make_predictor(device: str, objects: int, proposals: int) -> Predictor:
    detector, _ = make_detector(None, None, 0, device, proposals)
    with torch.no_grad():       # favour the person and a few classes so each frame has detections
        for k, cls in enumerate([1] + list(range(2, 2 + objects))):
            detector.cls_score.bias[cls] = 6.0 - 0.1 * k
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        torch.manual_seed(0)
        config = ModelConfig(mode="sgdet", freq=False)
        model = build_model(config, list(OBJECT_CLASSES))
    return Predictor(model, detector, OBJECT_CLASSES, device)


def time_round(predictor: Predictor, video: pathlib.Path, selection: FrameSelection, device: str) -> dict:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    started = time.perf_counter()
    frames = read_frames(video, selection)
    decoded = time.perf_counter()
    with torch.no_grad():
        bgr = [torch.from_numpy(np.ascontiguousarray(f.image[:, :, ::-1].transpose(2, 0, 1))) for f in frames]
        config = predictor.detector.config
        blob, im_info = frames_to_blob(bgr, config.target_size, config.max_size)
        entry = build_entry(predictor.detector, blob, im_info, None, "sgdet", training=False)
        sync()
        detected = time.perf_counter()
        out = predictor.model(entry, phase="test")
        graphs = predictor._graphs(out, bgr, [f.number for f in frames], [f.time for f in frames], 100, 0.0, "no")
        sync()
    finished = time.perf_counter()
    pairs = int(out["pair_idx"].shape[0])
    return {"frames": len(graphs), "pairs": pairs, "decode": decoded - started, "detector": detected - decoded,
            "model": finished - detected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=16, help="frames predicted per clip (default 16)")
    parser.add_argument("--every", type=int, default=24, help="take every N-th frame (default 24: 1 per second)")
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--objects", type=int, default=3, help="classes favoured besides the person")
    parser.add_argument("--proposals", type=int, default=12,
                        help="RPN proposals per frame (default 12: with the favoured classes, about AG's pairs per "
                             "frame in SGDet; the pair count is reported)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    predictor = make_predictor(args.device, args.objects, args.proposals)
    with tempfile.TemporaryDirectory() as tmp:
        video = pathlib.Path(tmp) / "clip.mp4"
        encode_clip(video, args.frames * args.every, args.width, args.height)
        selection = FrameSelection(every=args.every)
        time_round(predictor, video, selection, args.device)                  # warm-up
        rounds = [time_round(predictor, video, selection, args.device) for _ in range(args.rounds)]
    frames = rounds[0]["frames"]
    phase = {k: statistics.median(r[k] for r in rounds) * 1000 / frames for k in ("decode", "detector", "model")}
    total = sum(phase.values())
    row = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {platform.processor()}",
           "device": args.device, "threads": torch.get_num_threads(), "size": f"{args.width}x{args.height}",
           "frames": frames, "pairs_per_frame": round(rounds[0]["pairs"] / frames, 1), **{f"{k}_ms_per_frame": round(v, 1) for k, v in phase.items()},
           "frame_ms": round(total, 1), "frames_per_s": round(1000 / total, 2),
           "model_share": round(phase["model"] / total, 4)}
    for key, value in row.items():
        print(f"{key:>22}: {value}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"predict_{args.device.split(':')[0]}.csv"
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
