"""Dump the annotated Action Genome frames from the Charades videos (``fremure frames``).

Frame numbering follows AG's own ``tools/dump_frames.py``: it runs ``ffmpeg -i VIDEO
frames/VIDEO/%06d.png``, which writes every decoded frame at the video's native rate and numbers
the files from 1. So the annotation key ``'001YG.mp4/000089.png'`` is the 89th decoded frame,
i.e. the frame at 0-based decode index 88. AG then deletes the frames not listed in its
``frame_list.txt``; here only the listed frames are written. (ffmpeg's image writer runs in
constant-frame-rate mode and may duplicate or drop frames of a variable-rate video; PyAV yields
each decoded frame once. Charades videos are constant-rate, where both agree.)

Which frames: ``annotations/frame_list.txt`` when present (what AG's tool reads), else the keys
of ``annotations/person_bbox.pkl`` (what the loader reads; the object pickle has the same keys).

Resumable: each PNG is written to a temporary name and renamed, so a killed run never leaves a
truncated frame; frames already on disk are not written again; when a video has all its frames a
marker ``.fremure_frames_done`` (JSON: frames, source size, PyAV version) is written in its folder,
and a later run skips that video without opening it. Every failure (video missing or unreadable,
a frame number past the end of the video, a write error such as a full disk) is collected with
the video's name; nothing is silently left empty.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import time
from typing import Any, Iterable, Iterator, Sequence

logger = logging.getLogger(__name__)

DONE_MARKER = ".fremure_frames_done"
TMP_SUFFIX = ".fremure-tmp"
FRAME_LIST = "frame_list.txt"


class VideoDecodeError(RuntimeError):
    """A video that cannot be opened or decoded."""


@dataclasses.dataclass
class VideoResult:
    """Outcome of one video: frames written, frames already there, and what failed (None: nothing)."""

    video: str
    written: int = 0
    present: int = 0
    skipped: bool = False               # the done marker said everything is there: not opened
    missing: list[int] = dataclasses.field(default_factory=list)   # frame numbers not on disk afterwards
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.missing


def frame_name(number: int) -> str:
    """File name of AG frame ``number`` (1-based, as ffmpeg's ``%06d.png``): ``'000089.png'``."""
    if number < 1:
        raise ValueError(f"AG frame numbers start at 1, got {number}")
    return f"{number:06d}.png"


def parse_frame_key(key: str) -> tuple[str, int]:
    """``'001YG.mp4/000089.png'`` -> ``('001YG.mp4', 89)``; ValueError for anything else."""
    video, _, frame = str(key).strip().partition("/")
    stem, dot, ext = frame.partition(".")
    if not video or not dot or ext.lower() != "png" or not stem.isdigit() or int(stem) < 1:
        raise ValueError(f"not an AG frame key 'VIDEO.mp4/NNNNNN.png': {key!r}")
    return video, int(stem)


def annotated_frames(data_path: str | os.PathLike) -> tuple[dict[str, list[int]], pathlib.Path]:
    """``({video: sorted 1-based frame numbers}, source file)`` of an AG root: from
    ``annotations/frame_list.txt`` if it exists, else the keys of ``annotations/person_bbox.pkl``.
    FileNotFoundError names both files when neither exists."""
    ann = pathlib.Path(data_path) / "annotations"
    listing = ann / FRAME_LIST
    if listing.is_file():
        keys: Iterable[str] = [line for line in listing.read_text().splitlines() if line.strip()]
        source = listing
    else:
        source = ann / "person_bbox.pkl"
        if not source.is_file():
            raise FileNotFoundError(f"no frame list: neither {listing} nor {source} exists")
        from .safe_pickle import safe_load
        data = safe_load(source)
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a dict keyed by 'VIDEO.mp4/FRAME.png', got {type(data).__name__}")
        keys = data.keys()
    frames: dict[str, set[int]] = {}
    for key in keys:
        try:
            video, number = parse_frame_key(key)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        frames.setdefault(video, set()).add(number)
    return {video: sorted(numbers) for video, numbers in sorted(frames.items())}, source


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def png_is_whole(path: str | os.PathLike) -> bool:
    """True when ``path`` is a PNG with a valid header (signature, IHDR with a non-empty size) and
    its closing IEND chunk: a zero-byte, truncated or foreign file is False. Reads 45 bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(33)
            if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
                return False
            width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            handle.seek(-len(PNG_END), os.SEEK_END)
            return width > 0 and height > 0 and handle.read() == PNG_END
    except OSError:
        return False


def missing_frames(frames_dir: str | os.PathLike, wanted: dict[str, Sequence[int]]) -> dict[str, list[int]]:
    """Frame numbers of ``wanted`` without a whole PNG ``frames_dir/VIDEO/NNNNNN.png`` (see
    :func:`png_is_whole`; videos with none missing left out)."""
    root = pathlib.Path(frames_dir)
    out = {}
    for video, numbers in wanted.items():
        folder = root / video
        present = set(os.listdir(folder)) if folder.is_dir() else set()
        absent = [n for n in numbers if frame_name(n) not in present or not png_is_whole(folder / frame_name(n))]
        if absent:
            out[video] = absent
    return out


def _av_version() -> str:
    import av
    return av.__version__


def _marker_says_done(folder: pathlib.Path, numbers: Sequence[int]) -> bool:
    """True when the done marker lists every wanted frame and each file is still there."""
    try:
        record = json.loads((folder / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not set(numbers) <= set(record.get("frames", ())):
        return False
    return all(png_is_whole(folder / frame_name(n)) for n in numbers)


def _write_png(image, path: pathlib.Path) -> None:
    """Atomic PNG: written under a temporary name in the same folder, then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _clean_temporaries(folder: pathlib.Path) -> None:
    """Removes the temporary files a killed run left behind."""
    for entry in folder.iterdir():
        if entry.name.endswith(TMP_SUFFIX):
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def open_video_stream(video_path: str | os.PathLike) -> Iterator[tuple[Any, Any]]:
    """``(container, stream)``: the first video stream of ``video_path`` opened with PyAV (threaded
    decoding), closed on exit; VideoDecodeError names the file when it cannot be opened or has no
    video stream."""
    import av
    try:
        container = av.open(os.fspath(video_path))
    except (av.error.FFmpegError, OSError) as err:
        raise VideoDecodeError(f"cannot open video {video_path}: {err}") from err
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{video_path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream


def _decode_wanted(video_path: pathlib.Path, folder: pathlib.Path, todo: set[int], result: VideoResult) -> None:
    """Decodes ``video_path`` up to the last wanted frame, writing each frame number in ``todo``."""
    import av
    from PIL import Image
    with open_video_stream(video_path) as (container, stream):
        last = max(todo)
        try:
            for index, frame in enumerate(container.decode(stream), start=1):
                if index in todo:
                    _write_png(Image.fromarray(frame.to_ndarray(format="rgb24")), folder / frame_name(index))
                    result.written += 1
                if index >= last:
                    break
        except av.error.FFmpegError as err:
            raise VideoDecodeError(f"decoding {video_path} failed after {result.written} frames: {err}") from err


def dump_video(video_path: str | os.PathLike, out_dir: str | os.PathLike, numbers: Sequence[int]) -> VideoResult:
    """Writes frames ``numbers`` (1-based decode order, see the module docstring) of one video as
    ``out_dir/NNNNNN.png`` RGB PNGs, skipping those already there; never raises for a bad video
    or a write error, but returns them in ``VideoResult.error`` / ``missing``."""
    video_path, folder = pathlib.Path(video_path), pathlib.Path(out_dir)
    result = VideoResult(video=folder.name)
    started = time.perf_counter()
    try:
        if folder.is_dir() and _marker_says_done(folder, numbers):
            result.skipped, result.present = True, len(numbers)
            return result
        folder.mkdir(parents=True, exist_ok=True)
        _clean_temporaries(folder)
        (folder / DONE_MARKER).unlink(missing_ok=True)
        todo = {n for n in numbers if not png_is_whole(folder / frame_name(n))}
        result.present = len(numbers) - len(todo)
        if todo:
            if not video_path.is_file():
                raise VideoDecodeError(f"video file not found: {video_path}")
            _decode_wanted(video_path, folder, todo, result)
        result.missing = sorted(n for n in todo if not png_is_whole(folder / frame_name(n)))
        if result.missing:
            result.error = (f"{video_path.name} ends before frame {result.missing[0]} "
                            f"({len(result.missing)} annotated frames past its end)")
        else:
            record = {"frames": list(numbers), "video_bytes": video_path.stat().st_size if video_path.is_file() else None,
                      "decoder": f"PyAV {_av_version()}", "numbering": "1-based decode order (ffmpeg %06d.png)"}
            marker = folder / DONE_MARKER
            tmp = folder / f"{DONE_MARKER}{TMP_SUFFIX}"
            tmp.write_text(json.dumps(record) + "\n")
            os.replace(tmp, marker)
    except VideoDecodeError as err:
        result.error = str(err)
    except OSError as err:          # full disk, permissions, ...: name the folder being written
        result.error = f"writing frames to {folder} failed: {err}"
    finally:
        result.seconds = time.perf_counter() - started
        if result.error and not result.missing:
            result.missing = sorted(n for n in numbers if not (folder / frame_name(n)).is_file())
    return result


def dump_frames(videos_dir: str | os.PathLike, data_path: str | os.PathLike, workers: int = 1,
                progress: bool = True, only: Sequence[str] | None = None) -> list[VideoResult]:
    """Dumps every annotated frame of ``data_path`` (see :func:`annotated_frames`) from
    ``videos_dir/VIDEO.mp4`` into ``data_path/frames/VIDEO.mp4/NNNNNN.png``, ``workers`` videos at a
    time (processes); returns one VideoResult per video, in video order. ``only`` restricts the run
    to the named videos."""
    try:
        import av  # noqa: F401  (checked here so a missing PyAV is one clear error, not one per video)
    except ImportError as err:
        raise ImportError("fremure frames needs PyAV: pip install 'fremure[video]' (or pip install av)") from err
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    wanted, source = annotated_frames(data_path)
    if only:
        unknown = sorted(set(only) - set(wanted))
        if unknown:
            raise ValueError(f"videos not in {source}: {unknown[:5]}")
        wanted = {v: wanted[v] for v in only}
    frames_root = pathlib.Path(data_path) / "frames"
    jobs = [(str(pathlib.Path(videos_dir) / video), str(frames_root / video), numbers)
            for video, numbers in wanted.items()]
    logger.info("%d videos, %d annotated frames (from %s)", len(jobs), sum(len(j[2]) for j in jobs), source)
    from tqdm.auto import tqdm
    bar = tqdm(total=len(jobs), desc="frames", unit="video", disable=not progress)
    try:
        done = (dump_video(*job) for job in jobs) if workers == 1 else _run_in_workers(jobs, workers)
        return [_record(result, bar) for result in done]
    finally:
        bar.close()


def _run_in_workers(jobs: list[tuple[str, str, list[int]]], workers: int) -> Iterable[VideoResult]:
    """Yields :func:`dump_video` of each job, in job order, from ``workers`` spawned processes.

    Spawned, not forked: a child forked from a process in which FFmpeg (or torch) already started
    threads inherits their locks in whatever state they were, and FFmpeg's scaler then waits
    forever on a slice-thread lock nobody will release (seen with PyAV 18 on an AVX2 CPU).
    On any exit other than completion (Ctrl-C, an error in the caller) the workers are terminated
    rather than awaited, since a worker stuck in FFmpeg never reaches the shutdown handshake."""
    import multiprocessing
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                  mp_context=multiprocessing.get_context("spawn"))
    finished = False
    try:
        yield from pool.map(dump_video, *zip(*jobs), chunksize=1)
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            _terminate(pool)


def _terminate(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stops ``pool`` without waiting for running jobs: queued jobs are cancelled, workers killed."""
    if hasattr(pool, "terminate_workers"):          # Python >= 3.14
        pool.terminate_workers()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def _record(result: VideoResult, bar) -> VideoResult:
    if result.skipped:
        logger.debug("%s: already complete (done marker), not decoded", result.video)
    elif result.ok:
        logger.debug("%s: %d frames written, %d already there (%.2f s)", result.video, result.written,
                     result.present, result.seconds)
    else:
        logger.warning("%s: %s", result.video, result.error)
    bar.update(1)
    return result


def verify(data_path: str | os.PathLike, only: Sequence[str] | None = None, shown: int = 50) -> tuple[str, bool]:
    """``(report, complete)``: how many annotated frames of ``data_path`` (or of the videos ``only``)
    are on disk under ``frames/``, and up to ``shown`` videos with what they miss."""
    wanted, source = annotated_frames(data_path)
    if only:
        wanted = {v: wanted[v] for v in only if v in wanted}
    absent = missing_frames(pathlib.Path(data_path) / "frames", wanted)
    total = sum(len(v) for v in wanted.values())
    lost = sum(len(v) for v in absent.values())
    lines = [f"{total - lost} of {total} annotated frames present ({len(wanted)} videos, list from {source})"]
    for video, numbers in list(absent.items())[:shown]:
        listed = ", ".join(frame_name(n) for n in numbers[:5]) + (" ..." if len(numbers) > 5 else "")
        lines.append(f"  {video}: {len(numbers)} missing ({listed})")
    if len(absent) > shown:
        lines.append(f"  ... and {len(absent) - shown} more videos")
    return "\n".join(lines), not absent


def summarize(results: Sequence[VideoResult]) -> str:
    """A few lines: videos complete / skipped / failed, frames written, and what is missing."""
    failed = [r for r in results if not r.ok]
    lines = [f"{len(results)} videos: {sum(r.ok for r in results)} complete "
             f"({sum(r.skipped for r in results)} already done, not decoded), {len(failed)} failed; "
             f"{sum(r.written for r in results)} frames written, {sum(r.present for r in results)} already present"]
    if failed:
        lines.append(f"missing {sum(len(r.missing) for r in failed)} annotated frames in {len(failed)} videos:")
        for r in failed[:20]:
            lines.append(f"  {r.video}: {r.error}")
        if len(failed) > 20:
            lines.append(f"  ... and {len(failed) - 20} more videos")
    return "\n".join(lines)
