"""Frames of a video file at a chosen rate, decoded with PyAV (the ``video`` extra).

Frame numbers are 1-based decode positions, as ``fremure frames`` and AG's frame files number them,
so a frame chosen here is the pixel-identical image ``fremure frames`` would write for that number.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

import numpy as np

from ..data.frames import VideoDecodeError, open_video_stream

AG_FPS = 1.0   # about the rate of AG's annotated frames


@dataclasses.dataclass(frozen=True)
class FrameSelection:
    """Which frames to take: at most ``fps`` per second of video (the first frame of each 1/fps
    interval), or every ``every``-th frame (1 = all), or exactly the 1-based frame ``numbers``.
    Exactly one of the three is set; the default is the AG rate (1 per second)."""

    fps: float | None = None
    every: int | None = None
    numbers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("fps", "every", "numbers") if getattr(self, name) is not None]
        if not given:
            object.__setattr__(self, "fps", AG_FPS)
        elif len(given) > 1:
            raise ValueError(f"give one of fps, every and numbers, got {', '.join(given)}")
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a finite number > 0, got {self.fps!r}")
        if self.every is not None and (isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1):
            raise ValueError(f"every must be an integer >= 1, got {self.every!r}")
        if self.numbers is not None:
            numbers = tuple(self.numbers)
            if not numbers or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in numbers):
                raise ValueError(f"numbers must be 1-based frame numbers (integers >= 1), got {self.numbers!r}")
            object.__setattr__(self, "numbers", tuple(sorted(set(numbers))))


@dataclasses.dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: ``image`` uint8 ``[H, W, 3]`` RGB, its 1-based ``number`` and ``time`` (s)."""

    image: np.ndarray
    number: int
    time: float | None


def read_frames(path: str | os.PathLike, selection: FrameSelection | None = None) -> list[VideoFrame]:
    """The selected frames of the video at ``path``, in order. VideoDecodeError names the file when
    it cannot be opened, has no video stream, fails while decoding, or yields no selected frame."""
    selection = selection or FrameSelection()
    frames = list(_selected(os.fspath(path), selection))
    if not frames:
        raise VideoDecodeError(f"{path}: no frame decoded (empty video, or no frame matches the selection)")
    return frames


def _selected(path: str, selection: FrameSelection) -> Iterator[VideoFrame]:
    try:
        import av
    except ImportError as err:
        raise ImportError("reading videos needs PyAV: pip install 'fremure[video]'") from err
    if not os.path.isfile(path):
        raise VideoDecodeError(f"video file not found: {path}")
    with open_video_stream(path) as (container, stream):
        rate = float(stream.average_rate) if stream.average_rate else None
        last_bin, last_wanted = -1, max(selection.numbers) if selection.numbers else None
        try:
            for number, frame in enumerate(container.decode(stream), start=1):
                time = float(frame.time) if frame.time is not None else ((number - 1) / rate if rate else None)
                keep, last_bin = _keep(selection, number, time, last_bin)
                if keep:
                    yield VideoFrame(frame.to_ndarray(format="rgb24"), number, time)
                if last_wanted is not None and number >= last_wanted:
                    break
        except av.error.FFmpegError as err:
            raise VideoDecodeError(f"decoding {path} failed: {err}") from err


def _keep(selection: FrameSelection, number: int, time: float | None, last_bin: int) -> tuple[bool, int]:
    if selection.numbers is not None:
        return number in selection.numbers, last_bin
    if selection.every is not None:
        return (number - 1) % selection.every == 0, last_bin
    if time is None:            # no timestamps and no rate: one frame in 25 (a common rate)
        current = (number - 1) // 25
    else:
        current = math.floor(time * selection.fps + 1e-9)
    return current > last_bin, max(current, last_bin)
