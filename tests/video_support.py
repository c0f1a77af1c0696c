"""Videos made from the bundled synthetic AG sample, for the ``fremure frames`` tests.

Each sample video ``V.mp4`` with annotated frames ``N1 < N2 < ...`` becomes a video of
``max(N) + TAIL`` frames in which the frame at 1-based position ``N`` (AG's numbering, see
:mod:`fremure.data.frames`) is the bundled ``frames/V.mp4/NNNNNN.png`` and every other frame is a
flat grey whose level depends on its position, so a frame taken one position off is far from the
PNG expected there.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image

TAIL = 3
FPS = 24
# codec name -> (pixel format handed to the encoder, encoder options)
CODECS = {
    "rgb_lossless": ("libx264rgb", "rgb24", {"crf": "0", "preset": "ultrafast"}),
    "yuv444_lossless": ("libx264", "yuv444p", {"crf": "0", "preset": "ultrafast"}),
    "yuv420": ("libx264", "yuv420p", {"crf": "12", "preset": "ultrafast"}),
}


def filler(number: int, size: tuple[int, int]) -> np.ndarray:
    """Flat frame for a non-annotated position (``size`` = (width, height))."""
    level = (number * 37) % 256
    return np.full((size[1], size[0], 3), level, dtype=np.uint8)


def sample_frames(data_path: str | pathlib.Path) -> dict[str, dict[int, pathlib.Path]]:
    """``{video: {frame number: png path}}`` of the frames on disk under ``data_path/frames``."""
    out: dict[str, dict[int, pathlib.Path]] = {}
    for folder in sorted((pathlib.Path(data_path) / "frames").iterdir()):
        out[folder.name] = {int(p.stem): p for p in sorted(folder.glob("*.png"))}
    return out


def encode_video(path: pathlib.Path, frames: dict[int, pathlib.Path], codec: str = "rgb_lossless",
                 extra: int = TAIL, repeat: int = 1) -> int:
    """Writes one video (see the module docstring); ``repeat`` > 1 scales the frame numbers so
    the video is longer (for tests that need decoding to take time). Returns its frame count."""
    import av
    name, pix_fmt, options = CODECS[codec]
    with Image.open(next(iter(frames.values()))) as first:
        size = first.size
    count = max(frames) * repeat + extra
    with av.open(str(path), "w") as container:
        stream = container.add_stream(name, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], pix_fmt
        stream.options = dict(options)
        for number in range(1, count + 1):
            png = frames.get(number // repeat) if number % repeat == 0 else None
            if png is not None:
                with Image.open(png) as image:
                    array = np.asarray(image.convert("RGB"))
            else:
                array = filler(number, size)
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return count


def encode_sample(data_path: str | pathlib.Path, videos_dir: str | pathlib.Path, codec: str = "rgb_lossless",
                  only: list[str] | None = None) -> dict[str, dict[int, pathlib.Path]]:
    """Encodes the sample's videos into ``videos_dir``; returns the expected frames."""
    videos_dir = pathlib.Path(videos_dir)
    videos_dir.mkdir(parents=True, exist_ok=True)
    expected = sample_frames(data_path)
    if only is not None:
        expected = {v: expected[v] for v in only}
    for video, frames in expected.items():
        encode_video(videos_dir / video, frames, codec)
    return expected


def copy_annotations(data_path: str | pathlib.Path, root: str | pathlib.Path) -> pathlib.Path:
    """A new AG root with the sample's annotations and no frames."""
    import shutil
    root = pathlib.Path(root)
    shutil.copytree(pathlib.Path(data_path) / "annotations", root / "annotations")
    return root


def read_rgb(path: pathlib.Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def manifest_frame_keys(data_path: str | pathlib.Path) -> list[str]:
    """Frame keys listed by the sample's synthetic_manifest.json."""
    manifest = json.loads((pathlib.Path(data_path) / "synthetic_manifest.json").read_text())
    return [key for video in manifest["videos"] for key in video["frame_keys"]]


def subset_root(data_path: str | pathlib.Path, root: str | pathlib.Path, train: int, test: int) -> list[str]:
    """A new AG root holding the annotations (class lists and the three pickles) of the first
    ``train`` / ``test`` normal videos of the sample's manifest, and no frames; returns the videos."""
    import pickle
    import shutil
    from fremure.data.safe_pickle import safe_load
    data_path, root = pathlib.Path(data_path), pathlib.Path(root)
    manifest = json.loads((data_path / "synthetic_manifest.json").read_text())
    normal = [v for v in manifest["videos"] if v["kind"] == "normal"]
    chosen = [v["name"] for v in normal if v["split"] == "train"][:train] + \
        [v["name"] for v in normal if v["split"] == "test"][:test]
    (root / "annotations").mkdir(parents=True)
    for path in (data_path / "annotations").iterdir():
        if path.suffix == ".pkl":
            data = safe_load(path)
            with open(root / "annotations" / path.name, "wb") as handle:
                pickle.dump({k: v for k, v in data.items() if k.split("/")[0] in chosen}, handle, protocol=4)
        else:
            shutil.copy(path, root / "annotations" / path.name)
    return chosen
