"""From videos to results through the command line, as a new user on real AG would go:
``fremure frames`` (the bundled sample re-encoded as H.264 videos) -> ``check-data`` ->
``extract`` -> ``train`` -> ``eval`` (JSON, table, HTML report), with small settings, and the
HTML report rendered in headless Chromium when one is installed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("torchvision")

from fremure.cli import main
from fremure.data.synthetic import sample_path
from fremure.eval import read_json
from browser_support import browser, render
from video_support import encode_sample, read_rgb, subset_root

SAMPLE = sample_path()
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Runs the five commands once; returns the folder holding ag/, features/, run/, results/."""
    base = tmp_path_factory.mktemp("pipeline")
    root = base / "ag"
    videos = subset_root(SAMPLE, root, train=3, test=2)          # 5 of the 26 videos: about a minute of CPU
    expected = encode_sample(SAMPLE, base / "videos", "yuv444_lossless", only=videos)
    quiet = ["--progress", "false"]
    assert main(["frames", "--videos", str(base / "videos"), "--data-path", str(root), "--workers", "2", *quiet]) == 0
    assert main(["check-data", "--data-path", str(root)]) == 0
    assert main(["extract", "--data-path", str(root), "--out", str(base / "features"), "--mode", "predcls",
                 "--target-size", "96", "--proposals", "4", "--device", "cpu", *quiet]) == 0
    assert main(["train", "--data-path", str(root), "--train-cache", str(base / "features" / "predcls_train"),
                 "--test-cache", str(base / "features" / "predcls_test"), "--save-path", str(base / "run"),
                 "--dec-layer", "1", "--keep-unused", "false", "--rel-mem-compute", "none", "--nepoch", "1",
                 "--lr", "1e-4", "--tensorboard", "false",
                 *quiet]) == 0
    assert main(["eval", "--data-path", str(root), "--checkpoint", str(base / "run" / "checkpoints" / "last.json"),
                 "--test-cache", str(base / "features" / "predcls_test"), "--out", str(base / "results"),
                 "--report-frames", "3", *quiet]) == 0
    return base, expected


def test_dumped_frames_equal_the_bundled_ones_within_codec_tolerance(pipeline):
    base, expected = pipeline
    for video, frames in expected.items():
        for number, png in frames.items():
            error = np.abs(read_rgb(base / "ag" / "frames" / video / f"{number:06d}.png") - read_rgb(png))
            assert error.max() <= 3, (video, number, error.max())     # yuv444p crf 0: colour conversion rounding only


def test_run_folder_and_results(pipeline):
    base, _ = pipeline
    for name in ("config.yaml", "train.log", "history.jsonl"):
        assert (base / "run" / name).is_file(), name
    history = [json.loads(line) for line in (base / "run" / "history.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in history] == [0]
    results = read_json(base / "results" / "results.json")
    assert set(results) == {"with", "semi", "no"}
    assert all(0.0 <= results[c]["R"][20] <= 1.0 for c in results)


def test_html_report_is_self_contained(pipeline):
    base, _ = pipeline
    page = (base / "results" / "report.html").read_text()
    assert "<table id=\"recall\">" in page
    assert page.count("data:image/png;base64,") == 1 + 3          # the chart and three frames
    assert not re.search(r"(src|href)=\"(?!data:)", page), "the page must not load external files"


@pytest.mark.skipif(browser() is None, reason="no Chromium-family browser installed (apt-get install chromium)")
def test_html_report_renders_in_a_browser(pipeline, tmp_path):
    base, _ = pipeline
    results = read_json(base / "results" / "results.json")
    dom = render(base / "results" / "report.html", tmp_path / "report.png")
    table = dom[dom.index("<table id=\"recall\">"):dom.index("</table>")]
    for constraint in ("with", "semi", "no"):
        row = re.search(rf"<tr><th>{constraint}</th>(.*?)</tr>", table)
        assert row, (constraint, table)
        cells = re.findall(r"<td>([\d.]+)</td>", row.group(1))
        assert cells[1] == f"{100 * results[constraint]['R'][20]:.2f}"      # R@10, R@20, ...
    assert "R@20" in table and "mR@50" in table
    from PIL import Image
    with Image.open(tmp_path / "report.png") as shot:
        pixels = np.asarray(shot.convert("L"), dtype=np.float64)
    assert shot.size == (1300, 1800)
    # a blank page is one flat colour; the table, chart and frames make a busy one
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.02, (pixels.std(), (pixels < 128).mean())
