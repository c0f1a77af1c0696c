"""Frame loading and preprocessing for the AG Faster R-CNN (docs/ag_and_eval.md section 1.10).

A video becomes one zero-padded float32 blob ``[T, 3, Hmax, Wmax]`` in BGR channel order with the
caffe pixel means subtracted (no std division), every frame resized so that its short side is
``target_size`` (600), plus ``im_info [T, 3] = (Hmax, Wmax, scale of frame 0)``.

The resize reproduces OpenCV's ``cv2.resize(..., fx=s, fy=s, interpolation=INTER_LINEAR)`` on a
float32 image (the reference resizes after the mean subtraction): output size ``round(W*s)``
(round half to even, like ``cvRound``), sample position ``(d + 0.5) / s - 0.5`` computed in
double and rounded to float32, edge pixels replicated, horizontal pass before the vertical pass.
OpenCV itself is not a dependency.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)
TARGET_SIZE = 600


def read_frame_bgr(path: str | os.PathLike) -> torch.Tensor:
    """Read a PNG/JPEG frame as uint8 ``[3, H, W]`` in BGR order.

    Grey and RGBA images are converted to 3-channel RGB first (the reference would break on a
    4-channel PNG). Raises FileNotFoundError / ValueError naming the file.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:  # Pillow comes with the optional "detector" extra (torchvision)
        raise ImportError("reading frames needs Pillow (pip install 'fremure[detector]')") from err
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"frame image not found: {path}")
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot decode frame image {path}: {err}") from err
    return torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))


def frame_scale(height: int, width: int, target_size: int = TARGET_SIZE,
                max_size: int | None = None) -> float:
    """Scale factor ``target_size / min(H, W)``, optionally capped so ``round(s*max(H,W)) <= max_size``.

    The reference has the cap commented out (docs/ag_and_eval.md Q-D8), which is ``max_size=None`` here.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = float(target_size) / float(min(height, width))
    if max_size is not None and round(scale * max(height, width)) > max_size:
        scale = float(max_size) / float(max(height, width))
    return scale


def _linear_taps(src_len: int, scale: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV INTER_LINEAR taps along one axis: (index0, index1, weight1), weight0 = 1 - weight1."""
    dst_len = round(src_len * scale)
    inv = 1.0 / scale
    pos = ((torch.arange(dst_len, dtype=torch.float64) + 0.5) * inv - 0.5).to(torch.float32)
    lo = pos.floor()
    frac = pos - lo
    lo = lo.to(torch.int64)
    # Left edge: clamp the sample to pixel 0; right edge: replicate the last pixel.
    frac = torch.where(lo < 0, torch.zeros_like(frac), frac)
    lo = lo.clamp(min=0)
    at_end = lo >= src_len - 1
    frac = torch.where(at_end, torch.zeros_like(frac), frac)
    lo = torch.where(at_end, torch.full_like(lo, src_len - 1), lo)
    hi = (lo + 1).clamp(max=src_len - 1)
    return lo.to(device), hi.to(device), frac.to(device)


def resize_bilinear_cv(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize float32 ``[B, C, H, W]`` by ``scale`` like OpenCV INTER_LINEAR with fx = fy = scale.

    Returns float32 ``[B, C, round(H*scale), round(W*scale)]``.
    """
    if images.dim() != 4 or images.dtype != torch.float32:
        raise ValueError(f"images must be float32 [B,C,H,W], got {images.dtype} {tuple(images.shape)}")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    height, width = images.shape[-2:]
    x0, x1, wx = _linear_taps(width, scale, images.device)
    y0, y1, wy = _linear_taps(height, scale, images.device)
    rows = images.index_select(3, x0) * (1 - wx) + images.index_select(3, x1) * wx
    wy = wy.view(-1, 1)
    return rows.index_select(2, y0) * (1 - wy) + rows.index_select(2, y1) * wy


def preprocess_frames(frames_bgr: torch.Tensor, target_size: int = TARGET_SIZE,
                      max_size: int | None = None) -> tuple[torch.Tensor, float]:
    """Mean-subtract and resize same-sized uint8 BGR frames ``[B, 3, H, W]``.

    Returns (float32 ``[B, 3, h, w]``, scale). The subtraction is done in float64 and rounded
    once to float32, as numpy does for ``float32_image -= float64_means``.
    """
    if frames_bgr.dim() != 4 or frames_bgr.shape[1] != 3 or frames_bgr.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [B,3,H,W], got {frames_bgr.dtype} {tuple(frames_bgr.shape)}")
    means = torch.tensor(PIXEL_MEANS_BGR, dtype=torch.float64, device=frames_bgr.device).view(1, 3, 1, 1)
    centred = (frames_bgr.to(torch.float64) - means).to(torch.float32)
    scale = frame_scale(frames_bgr.shape[2], frames_bgr.shape[3], target_size, max_size)
    return resize_bilinear_cv(centred, scale), scale


def frames_to_blob(frames_bgr: Sequence[torch.Tensor], target_size: int = TARGET_SIZE,
                   max_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess T uint8 BGR frames ``[3, H_t, W_t]`` into the network input of one video.

    Returns ``blob`` float32 ``[T, 3, Hmax, Wmax]`` (zero padding bottom/right) and ``im_info``
    float32 ``[T, 3]`` = (Hmax, Wmax, scale of frame 0) on every row (docs/ag_and_eval.md Q-D6). Frames of equal
    size are resized together.
    """
    if len(frames_bgr) == 0:
        raise ValueError("frames_bgr is empty: a video needs at least one frame")
    groups: dict[tuple[int, int], list[int]] = {}
    for t, frame in enumerate(frames_bgr):
        if frame.dim() != 3 or frame.shape[0] != 3:
            raise ValueError(f"frame {t} must be [3,H,W], got {tuple(frame.shape)}")
        groups.setdefault(tuple(frame.shape[1:]), []).append(t)
    resized: list[torch.Tensor | None] = [None] * len(frames_bgr)
    scales = [0.0] * len(frames_bgr)
    for indices in groups.values():
        batch, scale = preprocess_frames(torch.stack([frames_bgr[t] for t in indices]), target_size, max_size)
        for k, t in enumerate(indices):
            resized[t], scales[t] = batch[k], scale
    height = max(r.shape[1] for r in resized)
    width = max(r.shape[2] for r in resized)
    if len(groups) == 1:
        blob = torch.stack(resized)
    else:
        blob = resized[0].new_zeros(len(resized), 3, height, width)
        for t, r in enumerate(resized):
            blob[t, :, : r.shape[1], : r.shape[2]] = r
    im_info = torch.tensor([[height, width, scales[0]]], dtype=torch.float32).repeat(len(resized), 1)
    return blob, im_info


def load_video_blob(frame_paths: Sequence[str | os.PathLike], target_size: int = TARGET_SIZE,
                    max_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and preprocess the frames of one video: ``blob [T,3,Hmax,Wmax]``, ``im_info [T,3]`` (float32)."""
    return frames_to_blob([read_frame_bgr(p) for p in frame_paths], target_size, max_size)
