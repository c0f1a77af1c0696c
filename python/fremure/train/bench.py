"""Training throughput: entries from the feature cache vs re-running the detector every epoch
(what the published train.py does)."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from ..data.cache import VideoEntrySource
from ..model.config import ModelConfig
from .config import TrainConfig
from ..pipeline import build_model, extract_split, frequencies, load_split, make_detector
from .trainer import Trainer


def train_throughput(data_path: str | None, work_dir: str, videos: int = 4, steps: int = 1,
                     detector_checkpoint: str | None = None, target_size: int = 96,
                     config: TrainConfig | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """Times ``steps`` epochs over the first ``videos`` train videos for both data sources.

    Returns rows ``{"source": "cache" | "detector", "videos", "seconds", "videos_per_s"}``; the
    one-off extraction time is reported as source ``"extract"``. ``device``: where the detector
    and the model run (``"cuda"`` on a GPU; times are then taken after a device synchronisation).
    """
    from ..data.synthetic import sample_path
    data_path = data_path or str(sample_path())
    config = config or TrainConfig(data_path=data_path, save_path=os.path.join(work_dir, "run"),
                                   model=ModelConfig(dec_layer=1, keep_unused=False, rel_mem_compute="none"),
                                   checkpoints="none", tensorboard=False, progress=False, lr=1e-4, device=device)
    detector, _ = make_detector(detector_checkpoint, target_size, device=config.device)
    train_ds = load_split(data_path, "train", config.model.mode)
    cache_dir = os.path.join(work_dir, "cache_train")
    started = time.perf_counter()
    extract_split(data_path, "train", config.model.mode, detector, cache_dir, progress=False)
    rows = [{"source": "extract", "videos": len(train_ds.video_list), "seconds": time.perf_counter() - started}]
    freqs = frequencies(config.model, train_ds, load_split(data_path, "test", config.model.mode))
    count = min(videos, len(train_ds.video_list))
    for name, source in (("cache", VideoEntrySource(train_ds, config.model.mode, True, cache=cache_dir)),
                         ("detector", VideoEntrySource(train_ds, config.model.mode, True, detector=detector))):
        torch.manual_seed(0)
        trainer = Trainer(config, build_model(config, train_ds.object_classes, freqs), source, source,
                          train_ds.gt_annotations, freqs)
        order = list(range(count))
        trainer.train_step(order[:1])                 # warm-up (allocations, first-call overheads)
        _synchronize(config.device)
        started = time.perf_counter()
        for _ in range(steps):
            for video in order:
                trainer.train_step([video])
        _synchronize(config.device)
        seconds = time.perf_counter() - started
        rows.append({"source": name, "videos": count * steps, "seconds": seconds, "videos_per_s": count * steps / seconds})
    rows[0]["videos_per_s"] = rows[0]["videos"] / rows[0]["seconds"]
    return rows


def _synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
