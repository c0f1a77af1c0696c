"""Many videos through one :class:`~fremure.predict.predictor.Predictor` into an output folder:
what ``fremure predict`` runs. Resumable (a video whose outputs exist is skipped), and a video that
fails (unreadable file, no video stream, no frame, bad boxes) is named and the others go on."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time
from typing import Any, Mapping, Sequence

from ..data.frames import VideoDecodeError
from .outputs import write_index, write_jsonl, write_overlay, write_viewer
from .predictor import CONSTRAINTS, Predictor
from .video import FrameSelection, read_frames

logger = logging.getLogger("fremure.predict")


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """Options of :func:`predict_videos` (and of ``fremure predict``, which only parses them).

    ``fps`` / ``every`` / ``all_frames``: the frame rate (default the AG rate, 1 per second), every
    N-th frame, or every frame; ``top_k``, ``min_score``, ``constraint`` as :meth:`Predictor.__call__`;
    ``overlay``: also write ``NAME.overlay.mp4``; ``viewer``: write ``NAME.html`` and ``index.html``;
    ``overwrite``: redo videos whose outputs exist (default: skip them, so a killed run resumes)."""

    fps: float | None = None
    every: int | None = None
    all_frames: bool = False
    top_k: int | None = 100
    min_score: float = 0.0
    constraint: str = "no"
    overlay: bool = False
    viewer: bool = True
    overwrite: bool = False
    progress: bool = True

    def selection(self) -> FrameSelection:
        """The FrameSelection these options name (ValueError when more than one rate is given)."""
        if self.all_frames and (self.fps is not None or self.every is not None):
            raise ValueError("all_frames excludes fps and every")
        return FrameSelection(every=1) if self.all_frames else FrameSelection(fps=self.fps, every=self.every)

    def __post_init__(self) -> None:
        self.selection()
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {self.constraint!r}")


@dataclasses.dataclass
class VideoOutcome:
    """One video: its ``name`` (outputs ``NAME.*``), frames predicted, whether it was ``skipped``
    (outputs already there), the ``error`` that stopped it (None: done) and the seconds it took."""

    video: str
    name: str
    frames: int = 0
    skipped: bool = False
    error: str | None = None
    seconds: float = 0.0


def output_names(videos: Sequence[str | os.PathLike]) -> list[str]:
    """The output name of each video: its file name without the extension; ValueError when two
    videos would write the same files."""
    names = [pathlib.Path(v).stem for v in videos]
    seen: dict[str, str] = {}
    for video, name in zip(videos, names):
        if name in seen:
            raise ValueError(f"videos: {seen[name]} and {video} would both write {name}.jsonl; rename one")
        seen[name] = os.fspath(video)
    return names


def read_boxes_file(path: str | os.PathLike) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """``{video name or file name: {frame number: [{"box": [x1, y1, x2, y2], "class": NAME}, ...]}}``
    (docs/predict.md); the frames listed are the frames predicted."""
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--boxes {path}: not a readable JSON file: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"--boxes {path}: expected an object {{video: {{frame number: [boxes]}}}}")
    out = {}
    for video, frames in data.items():
        if not isinstance(frames, dict) or not frames:
            raise ValueError(f"--boxes {path}: {video!r} must map frame numbers to lists of boxes")
        try:
            out[video] = {int(number): boxes for number, boxes in frames.items()}
        except ValueError as err:
            raise ValueError(f"--boxes {path}: {video!r}: frame numbers must be integers ({err})") from None
    return out


def predict_videos(predictor: Predictor, videos: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   config: PredictConfig = PredictConfig(),
                   boxes: Mapping[str, Mapping[int, list[dict[str, Any]]]] | None = None) -> list[VideoOutcome]:
    """Scene graphs of every video into ``out_dir`` (``NAME.jsonl``, ``NAME.html``, optionally
    ``NAME.overlay.mp4``, and ``index.html``); returns one outcome per video, in order."""
    from tqdm.auto import tqdm
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(videos)
    outcomes = []
    for video, name in tqdm(list(zip(videos, names)), desc="predict", unit="video", disable=not config.progress):
        outcome = VideoOutcome(os.fspath(video), name)
        started = time.perf_counter()
        try:
            if not config.overwrite and _done(out, name, config):
                outcome.skipped = True
            else:
                outcome.frames = _one_video(predictor, video, out, name, config, _video_boxes(boxes, video, name))
        except (VideoDecodeError, ValueError, OSError) as err:
            outcome.error = str(err)
            logger.error("%s: %s", video, err)
        outcome.seconds = time.perf_counter() - started
        outcomes.append(outcome)
    if config.viewer:
        write_index(out, [(o.name, o.frames, _status(o)) for o in outcomes])
    return outcomes


def _done(out: pathlib.Path, name: str, config: PredictConfig) -> bool:
    wanted = [f"{name}.jsonl"] + ([f"{name}.html"] if config.viewer else []) + \
        ([f"{name}.overlay.mp4"] if config.overlay else [])
    return all((out / file).is_file() for file in wanted)


def _video_boxes(boxes, video, name):
    if boxes is None:
        return None
    for key in (pathlib.Path(video).name, name, os.fspath(video)):
        if key in boxes:
            return boxes[key]
    raise ValueError(f"--boxes has no entry for this video (keys tried: {pathlib.Path(video).name!r}, {name!r})")


def _one_video(predictor: Predictor, video, out: pathlib.Path, name: str, config: PredictConfig,
               frame_boxes: Mapping[int, list] | None) -> int:
    selection = config.selection() if frame_boxes is None else FrameSelection(numbers=tuple(frame_boxes))
    frames = read_frames(video, selection)
    if frame_boxes is not None and len(frames) != len(frame_boxes):
        missing = sorted(set(frame_boxes) - {f.number for f in frames})
        raise VideoDecodeError(f"{video}: the --boxes frames {missing[:5]} lie past the video's end")
    per_frame = [frame_boxes[f.number] for f in frames] if frame_boxes is not None else None
    graphs = predictor(frames, boxes=per_frame, top_k=config.top_k, min_score=config.min_score,
                       constraint=config.constraint)
    images = [f.image for f in frames]
    write_jsonl(out / f"{name}.jsonl", name, graphs)
    if config.viewer:
        summary = f"{len(graphs)} frames of {video}; task {predictor.mode}; relations ranked by score"
        write_viewer(out / f"{name}.html", name, graphs, images, summary)
    if config.overlay:
        write_overlay(out / f"{name}.overlay.mp4", graphs, images, _overlay_fps(frames, config))
    return len(graphs)


def _overlay_fps(frames, config: PredictConfig) -> float:
    times = [f.time for f in frames if f.time is not None]
    if len(times) >= 2 and times[-1] > times[0]:
        return (len(times) - 1) / (times[-1] - times[0])
    return config.fps or 1.0


def _status(outcome: VideoOutcome) -> str:
    if outcome.error:
        return f"failed: {outcome.error}"
    return "skipped (outputs exist)" if outcome.skipped else f"done in {outcome.seconds:.1f} s"
