"""Frame reading and the OpenCV-compatible preprocessing of docs/ag_and_eval.md 1.10."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fremure.data.images import (PIXEL_MEANS_BGR, frame_scale, frames_to_blob, load_video_blob,
                                 preprocess_frames, read_frame_bgr, resize_bilinear_cv)


def _cv_taps(dst: int, src_len: int, scale: float) -> tuple[int, int, np.float32]:
    """OpenCV INTER_LINEAR source taps of one output index, written out per pixel."""
    pos = np.float32((dst + 0.5) * (1.0 / scale) - 0.5)
    lo = int(np.floor(pos))
    frac = np.float32(pos - np.float32(lo))
    if lo < 0:
        lo, frac = 0, np.float32(0)
    if lo >= src_len - 1:
        lo, frac = src_len - 1, np.float32(0)
    return lo, min(lo + 1, src_len - 1), frac


def _slow_resize(image: np.ndarray, scale: float) -> np.ndarray:
    """Per-pixel float32 transcription of cv2.resize(fx=fy=scale, INTER_LINEAR): rows first, then columns."""
    height, width = image.shape
    out_h, out_w = round(height * scale), round(width * scale)
    rows = np.zeros((height, out_w), dtype=np.float32)
    for x in range(out_w):
        a, b, f = _cv_taps(x, width, scale)
        for y in range(height):
            rows[y, x] = image[y, a] * (np.float32(1) - f) + image[y, b] * f
    out = np.zeros((out_h, out_w), dtype=np.float32)
    for y in range(out_h):
        a, b, f = _cv_taps(y, height, scale)
        for x in range(out_w):
            out[y, x] = rows[a, x] * (np.float32(1) - f) + rows[b, x] * f
    return out


def test_known_opencv_upsampling():
    row = torch.tensor([[[[0.0, 10.0]]]])
    out = resize_bilinear_cv(row, 2.0)
    assert out.shape == (1, 1, 2, 4)
    assert torch.equal(out[0, 0, 0], torch.tensor([0.0, 2.5, 7.5, 10.0]))


@pytest.mark.parametrize("shape,scale", [((3, 5), 1.5), ((7, 4), 600 / 270), ((6, 9), 0.7), ((5, 5), 1.0)])
def test_resize_matches_per_pixel_opencv_formula(shape, scale):
    rng = np.random.default_rng(1)
    image = rng.normal(0, 50, size=shape).astype(np.float32)
    ours = resize_bilinear_cv(torch.from_numpy(image)[None, None], scale)[0, 0].numpy()
    expected = _slow_resize(image, scale)
    assert ours.shape == expected.shape == (round(shape[0] * scale), round(shape[1] * scale))
    np.testing.assert_array_equal(ours, expected)


def test_output_size_rounds_half_to_even_like_cvround():
    out = resize_bilinear_cv(torch.zeros(1, 1, 3, 5), 1.5)     # 4.5 -> 4, 7.5 -> 8
    assert out.shape[-2:] == (4, 8)


def test_frame_scale_reference_and_capped():
    assert frame_scale(270, 480) == 600 / 270
    assert round(480 * frame_scale(270, 480)) == 1067           # max size cap ignored (Q-D8)
    assert frame_scale(270, 480, max_size=1000) == 1000 / 480


def test_mean_subtraction_in_float64_then_float32():
    frame = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(1, 3, 1, 1)
    out, scale = preprocess_frames(frame, target_size=16)
    assert scale == 1.0
    for c, mean in enumerate(PIXEL_MEANS_BGR):
        expected = (np.arange(256, dtype=np.float64) - mean).astype(np.float32).reshape(16, 16)
        np.testing.assert_array_equal(out[0, c].numpy(), expected)


def test_blob_pads_and_uses_first_frame_scale():
    small = torch.full((3, 20, 30), 200, dtype=torch.uint8)
    large = torch.full((3, 40, 30), 200, dtype=torch.uint8)
    blob, im_info = frames_to_blob([small, large], target_size=40)
    assert blob.shape == (2, 3, 53, 60)                          # small -> 40x60 (s=2), large -> 53x40 (s=4/3)
    assert torch.equal(im_info, torch.tensor([[53, 60, 2.0], [53, 60, 2.0]]))
    assert torch.all(blob[0, :, 40:, :] == 0) and torch.all(blob[0, :, :40, :] != 0)
    assert torch.all(blob[1, :, :, 40:] == 0) and torch.all(blob[1, :, :, :40] != 0)


def test_read_frame_is_bgr_and_errors_name_the_file(tmp_path):
    from PIL import Image

    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 255                                            # pure red
    Image.fromarray(rgb).save(tmp_path / "f.png")
    bgr = read_frame_bgr(tmp_path / "f.png")
    assert bgr.shape == (3, 4, 6) and torch.all(bgr[2] == 255) and torch.all(bgr[:2] == 0)
    blob, im_info = load_video_blob([tmp_path / "f.png"], target_size=8)
    assert blob.shape == (1, 3, 8, 12) and im_info[0, 2] == 2.0
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_frame_bgr(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        read_frame_bgr(tmp_path / "bad.png")


def test_grey_and_rgba_frames_become_three_channels(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((4, 5), 77, dtype=np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.full((4, 5, 4), [10, 20, 30, 128], dtype=np.uint8)).save(tmp_path / "rgba.png")
    assert torch.all(read_frame_bgr(tmp_path / "grey.png") == 77)
    assert read_frame_bgr(tmp_path / "rgba.png")[:, 0, 0].tolist() == [30, 20, 10]


def test_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(torch.zeros(1, 3, 4, 4), 4)
    with pytest.raises(ValueError, match="empty"):
        frames_to_blob([])
    with pytest.raises(ValueError, match="scale"):
        resize_bilinear_cv(torch.zeros(1, 1, 4, 4), 0.0)
