"""``fremure frames`` and ``fremure check-data`` on videos encoded from the bundled synthetic sample.

The videos hold the bundled PNG of frame N at 1-based position N and flat grey frames elsewhere
(tests/video_support.py), so a dump that is one frame off, or that decodes the wrong video, is
far from the expected pixels."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("av")

from fremure.cli import main
from fremure.data import frames as frames_module
from fremure.data.frames import DONE_MARKER, TMP_SUFFIX, annotated_frames, dump_frames, dump_video
from fremure.data.synthetic import sample_path
from video_support import copy_annotations, encode_sample, encode_video, filler, read_rgb, sample_frames

SAMPLE = sample_path()


def _dumped(root: pathlib.Path, video: str, number: int) -> pathlib.Path:
    return root / "frames" / video / f"{number:06d}.png"


@pytest.fixture(scope="module")
def lossless_videos(tmp_path_factory):
    """Every sample video, RGB-lossless H.264 (libx264rgb, crf 0)."""
    folder = tmp_path_factory.mktemp("videos")
    return folder, encode_sample(SAMPLE, folder, "rgb_lossless")


def test_frame_list_is_the_annotation_keys():
    wanted, source = annotated_frames(SAMPLE)
    assert source.name == "person_bbox.pkl"
    expected = sample_frames(SAMPLE)
    assert {v: sorted(f) for v, f in expected.items()} == wanted


def test_lossless_dump_equals_the_bundled_frames_exactly(lossless_videos, tmp_path, capsys):
    videos, expected = lossless_videos
    root = copy_annotations(SAMPLE, tmp_path / "ag")
    assert main(["frames", "--videos", str(videos), "--data-path", str(root), "--workers", "2",
                 "--progress", "false"]) == 0
    out = capsys.readouterr().out
    total = sum(len(f) for f in expected.values())
    assert f"{total} frames written" in out and "0 failed" in out
    for video, frames in expected.items():
        on_disk = sorted(p.name for p in (root / "frames" / video).glob("*.png"))
        assert on_disk == [f"{n:06d}.png" for n in sorted(frames)], video      # exactly the annotated frames
        assert (root / "frames" / video / DONE_MARKER).is_file()
        for number, png in frames.items():
            np.testing.assert_array_equal(read_rgb(_dumped(root, video, number)), read_rgb(png), err_msg=f"{video} {number}")
    assert main(["frames", "--verify", "--data-path", str(root)]) == 0
    assert main(["check-data", "--data-path", str(root)]) == 0


def test_yuv_videos_within_codec_tolerance(tmp_path):
    """yuv444p at crf 0 loses only the RGB <-> YUV rounding (measured: at most 2 levels); yuv420p
    also halves the chroma resolution, so only the mean error is small there, and each frame must
    be much closer to its PNG than to the neighbouring positions' frames."""
    videos = ["1FYMC.mp4", "3MKWA.mp4"]
    for codec in ("yuv444_lossless", "yuv420"):
        root = copy_annotations(SAMPLE, tmp_path / codec / "ag")
        expected = encode_sample(SAMPLE, tmp_path / codec / "videos", codec, only=videos)
        results = dump_frames(tmp_path / codec / "videos", root, workers=1, progress=False, only=videos)
        assert all(r.ok for r in results), [r.error for r in results]
        for video, frames in expected.items():
            for number, png in frames.items():
                got, want = read_rgb(_dumped(root, video, number)), read_rgb(png)
                error = np.abs(got - want)
                if codec == "yuv444_lossless":
                    assert error.max() <= 3, (video, number, error.max())     # two 8-bit colour conversions
                else:
                    assert error.mean() < 4, (video, number, error.mean())
                for neighbour in (number - 1, number + 1):
                    if neighbour >= 1 and neighbour not in frames:
                        off = np.abs(filler(neighbour, (want.shape[1], want.shape[0])).astype(np.int16) - got)
                        assert off.mean() > 5 * max(error.mean(), 1.0), (video, number, neighbour)


def test_existing_frames_are_kept_and_finished_videos_skipped(lossless_videos, tmp_path):
    videos, expected = lossless_videos
    root = copy_annotations(SAMPLE, tmp_path / "ag")
    names = ["1FYMC.mp4", "3MKWA.mp4", "BW98P.mp4"]
    first = dump_frames(videos, root, workers=1, progress=False, only=names)
    assert [r.written for r in first] == [len(expected[v]) for v in names]
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (root / "frames").rglob("*.png")}
    # video 0 loses a frame and its marker, video 1 only its marker, video 2 stays complete
    lost = _dumped(root, names[0], sorted(expected[names[0]])[3])
    lost.unlink()
    (root / "frames" / names[0] / DONE_MARKER).unlink()
    (root / "frames" / names[1] / DONE_MARKER).unlink()
    again = dump_frames(videos, root, workers=1, progress=False, only=names)
    assert [(r.skipped, r.written) for r in again] == [(False, 1), (False, 0), (True, 0)]
    for path, stamp in stamps.items():
        if path != lost:
            assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, path
    np.testing.assert_array_equal(read_rgb(lost), read_rgb(expected[names[0]][int(lost.stem)]))


def test_failures_are_named_and_exit_1(lossless_videos, tmp_path, capsys):
    videos, expected = lossless_videos
    broken = tmp_path / "videos"
    shutil.copytree(videos, broken)
    (broken / "3MKWA.mp4").unlink()                                        # missing video
    (broken / "BW98P.mp4").write_bytes(b"this is not a video" * 100)         # unreadable video
    short = dict(expected["1FYMC.mp4"])
    last = max(short)
    del short[last]
    encode_video(broken / "1FYMC.mp4", short, "rgb_lossless", extra=0)       # ends before its last annotated frame
    root = copy_annotations(SAMPLE, tmp_path / "ag")
    names = ["1FYMC.mp4", "3MKWA.mp4", "BW98P.mp4", "ESB8S.mp4"]
    args = ["frames", "--videos", str(broken), "--data-path", str(root), "--workers", "2", "--progress", "false",
            "--video", *names]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "3 failed" in out
    assert "3MKWA.mp4: video file not found" in out
    assert "BW98P.mp4: cannot open video" in out
    assert f"1FYMC.mp4: 1FYMC.mp4 ends before frame {last} (1 annotated frames past its end)" in out
    assert f"missing {1 + len(expected['3MKWA.mp4']) + len(expected['BW98P.mp4'])} annotated frames in 3 videos" in out
    assert not (root / "frames" / "1FYMC.mp4" / DONE_MARKER).exists()
    assert (root / "frames" / "ESB8S.mp4" / DONE_MARKER).exists()
    # --verify names what is missing and exits 2 (input incomplete)
    assert main(["frames", "--verify", "--data-path", str(root), "--video", *names]) == 2
    out = capsys.readouterr().out
    assert f"1FYMC.mp4: 1 missing ({last:06d}.png)" in out and "3MKWA.mp4" in out


def test_write_errors_such_as_a_full_disk_are_named(lossless_videos, tmp_path, monkeypatch, capsys):
    videos, _ = lossless_videos
    root = copy_annotations(SAMPLE, tmp_path / "ag")

    def full_disk(image, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(frames_module, "_write_png", full_disk)
    args = ["frames", "--videos", str(videos), "--data-path", str(root), "--workers", "1", "--progress", "false",
            "--video", "1FYMC.mp4"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1FYMC.mp4: writing frames to" in out and "No space left on device" in out
    assert not list((root / "frames" / "1FYMC.mp4").glob("*.png"))


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["frames", "--videos", str(tmp_path / "none"), "--data-path", str(SAMPLE)]) == 2
    assert f"--videos {tmp_path / 'none'}: no such directory" in capsys.readouterr().err
    assert main(["frames", "--videos", str(tmp_path), "--data-path", str(tmp_path / "none")]) == 2
    assert "--data-path" in capsys.readouterr().err
    assert main(["frames", "--videos", str(tmp_path), "--data-path", str(tmp_path)]) == 2
    assert "no frame list" in capsys.readouterr().err


def test_killed_run_resumes_without_decoding_finished_videos(tmp_path):
    """`fremure frames` in a subprocess is killed (SIGKILL) right after its first video is done;
    the rerun must not touch anything the first run wrote (finished videos are not even opened:
    their done marker is trusted), complete the rest, and leave no temporary file."""
    repeat, names = 10, ["1FYMC.mp4", "3MKWA.mp4", "BW98P.mp4", "ESB8S.mp4", "FHY7H.mp4"]
    frames = sample_frames(SAMPLE)
    videos = tmp_path / "videos"
    videos.mkdir()
    root = copy_annotations(SAMPLE, tmp_path / "ag")
    keys = []
    for video in names:                 # long videos (~1,800 frames) so that decoding one takes a while
        encode_video(videos / video, frames[video], "rgb_lossless", repeat=repeat)
        keys += [f"{video}/{n * repeat:06d}.png" for n in sorted(frames[video])]
    (root / "annotations" / "frame_list.txt").write_text("\n".join(keys) + "\n")
    command = [sys.executable, "-m", "fremure", "frames", "--videos", str(videos), "--data-path", str(root),
               "--workers", "1", "--progress", "false"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    markers = []
    while not markers and process.poll() is None and time.monotonic() < deadline:
        markers = list((root / "frames").glob(f"*/{DONE_MARKER}"))
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = sorted(p.parent.name for p in (root / "frames").glob(f"*/{DONE_MARKER}"))
    assert done and len(done) < len(names), f"kill came too late or too early: {done}"
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (root / "frames").rglob("*") if p.is_file()
              and not p.name.endswith(TMP_SUFFIX)}

    rerun = subprocess.run(command + ["-v"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(names)} complete ({len(done)} already done, not decoded)" in rerun.stdout, rerun.stdout
    for video in done:
        assert f"{video}: already complete (done marker), not decoded" in rerun.stderr
    for path, stamp in before.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, f"{path} was written again"
    assert not [p for p in (root / "frames").rglob("*") if p.name.endswith(TMP_SUFFIX)]
    for video in names:
        for n, png in frames[video].items():
            np.testing.assert_array_equal(read_rgb(_dumped(root, video, n * repeat)), read_rgb(png))


# A sitecustomize that makes every Python process started below the first one (the CLI) a worker
# that never finishes its video, as a worker stuck in FFmpeg does; each such worker leaves its pid
# in FREMURE_TEST_HANG_DIR so the test can check it is gone afterwards.
HANGING_WORKERS = """
import os, pathlib, time
if os.environ.get("FREMURE_TEST_ROOT_PID") is None:
    os.environ["FREMURE_TEST_ROOT_PID"] = str(os.getpid())
else:
    import fremure.data.frames as frames

    def hang(*args, **kwargs):
        pathlib.Path(os.environ["FREMURE_TEST_HANG_DIR"], str(os.getpid())).touch()
        while True:
            time.sleep(1)

    frames.dump_video = hang
"""


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state            # a zombie has ended; only its exit status is left


def test_ctrl_c_ends_hung_workers(tmp_path):
    """SIGINT to `fremure frames --workers 2` whose workers never return (as ones deadlocked in
    FFmpeg): the CLI exits 130 promptly and no worker is left running. Before the fix the CLI
    printed "interrupted" and then waited on the workers for ever."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HANGING_WORKERS)
    hang_dir = tmp_path / "workers"
    hang_dir.mkdir()
    videos = tmp_path / "videos"
    videos.mkdir()
    root = copy_annotations(SAMPLE, tmp_path / "ag")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *sys.path]), FREMURE_TEST_HANG_DIR=str(hang_dir))
    env.pop("FREMURE_TEST_ROOT_PID", None)
    command = [sys.executable, "-m", "fremure", "frames", "--videos", str(videos), "--data-path", str(root),
               "--workers", "2", "--progress", "false"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(hang_dir.iterdir())) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [int(p.name) for p in hang_dir.iterdir()]
        assert len(workers) == 2, f"workers did not start: {process.poll()} {workers}"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, (out, err)
    assert "fremure frames: interrupted" in err
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], "workers left running after Ctrl-C"


def test_workers_start_clean_after_decoding_in_the_parent(lossless_videos, tmp_path, monkeypatch):
    """The parent decodes first (FFmpeg's decoder and scaler threads have run in it), then two
    workers decode: with forked workers this deadlocked in FFmpeg's scaler (PyAV 18.1.1, AVX2 CPU),
    so the workers must be spawned; pytest-timeout turns a relapse into a failure, not a stall."""
    import concurrent.futures
    import multiprocessing

    videos, expected = lossless_videos
    root = copy_annotations(SAMPLE, tmp_path / "ag")
    names = sorted(expected)[:4]
    methods = []
    real_pool = concurrent.futures.ProcessPoolExecutor

    def recording_pool(*args, **kwargs):
        context = kwargs.get("mp_context") or multiprocessing.get_context()
        methods.append(context.get_start_method())
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", recording_pool)
    first = dump_frames(videos, root, workers=1, progress=False, only=names[:1])      # decodes in this process
    assert first[0].ok
    results = dump_frames(videos, root, workers=2, progress=False, only=names)
    assert [r.video for r in results] == names and all(r.ok for r in results), [r.error for r in results]
    assert methods == ["spawn"]


def test_frame_numbers_start_at_1(tmp_path):
    """A frame number of 0 is not an AG frame (numbers start at 1)."""
    with pytest.raises(ValueError, match="start at 1"):
        dump_video(tmp_path / "x.mp4", tmp_path / "out", [0])


# ------------------------------------------------------------------ check-data
def test_check_data_names_the_missing_files(tmp_path, capsys):
    root = tmp_path / "ag"
    shutil.copytree(SAMPLE, root)
    assert main(["check-data", "--data-path", str(root)]) == 0
    assert "ready for predcls, sgcls, sgdet" in capsys.readouterr().out
    (root / "annotations" / "object_bbox_and_relationship_filtersmall.pkl").unlink()
    assert main(["check-data", "--data-path", str(root)]) == 2
    out = capsys.readouterr().out
    assert "MISSING annotations/object_bbox_and_relationship_filtersmall.pkl" in out
    assert "(needed by sgcls, sgdet)" in out
    assert main(["check-data", "--data-path", str(root), "--mode", "predcls"]) == 0
    capsys.readouterr()
    frame = next((root / "frames").glob("*/*.png"))
    frame.unlink()
    assert main(["check-data", "--data-path", str(root), "--mode", "predcls"]) == 2
    out = capsys.readouterr().out
    assert f"{frame.parent.name}/{frame.name}" in out and "1 missing in 1 videos" in out
    (root / "annotations" / "relationship_classes.txt").write_text("looking at\n")
    assert main(["check-data", "--data-path", str(root), "--mode", "predcls"]) == 2
    assert "relationship_classes.txt: 1 lines, AG's file has 26" in capsys.readouterr().out
