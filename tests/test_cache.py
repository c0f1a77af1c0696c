"""Feature cache: safetensors round trip (float32 / float16), resume, corruption, transparent source."""

from __future__ import annotations

import json
import os

import pytest
import torch

import fremure.data.cache as cache_module
from fremure.data.cache import (CacheCorruptedError, FeatureCache, VideoEntrySource, dataset_fingerprint,
                                extract_features, read_entry_file, write_entry_file)
from fremure.data.features import video_entry

from detector_fakes import fake_ag, small_detector


def _synthetic_entry(pairs: int = 3) -> dict:
    g = torch.Generator().manual_seed(pairs)
    return {"boxes": torch.rand(5, 5, generator=g) * 300, "labels": torch.arange(5), "scores": torch.rand(5, generator=g),
            "features": torch.randn(5, 2048, generator=g), "union_feat": torch.randn(pairs, 1024, 7, 7, generator=g),
            "pair_idx": torch.zeros(pairs, 2, dtype=torch.int64), "im_idx": torch.zeros(pairs),
            "spatial_masks": torch.rand(pairs, 2, 27, 27, generator=g) - 0.5, "im_info": torch.tensor(2.5),
            "attention_gt": [[k % 3] for k in range(pairs)], "spatial_gt": [[], [1, 4], [0]][:pairs] + [[2]] * (pairs - 3),
            "contacting_gt": [list(range(k)) for k in range(pairs)]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("pairs", [3, 0])
def test_entry_file_round_trip(tmp_path, dtype, pairs):
    entry = _synthetic_entry(pairs)
    path = tmp_path / "v.safetensors"
    write_entry_file(path, entry, dtype, {"video": "v"})
    back = read_entry_file(path, "v")
    assert set(back) == set(entry)
    for key, value in entry.items():
        if isinstance(value, list):
            assert back[key] == value, key
        elif key in ("features", "union_feat") and dtype == torch.float16:
            assert back[key].dtype == torch.float32
            torch.testing.assert_close(back[key], value, atol=2e-3, rtol=1e-3)
        else:
            assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return fake_ag(str(tmp_path_factory.mktemp("ag")), videos=2, frames=3, seed=3)


@pytest.fixture(scope="module")
def extracted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache16")
    return extract_features(dataset, small_detector(), out, "predcls", dtype=torch.float16, progress=False)


def test_extraction_matches_direct_entries(dataset, extracted):
    assert extracted.videos == ["V0000.mp4", "V0001.mp4"] and extracted.missing() == []
    assert (extracted.mode, extracted.training, extracted.feature_dtype) == ("predcls", False, "float16")
    assert extracted.dataset_fingerprint == dataset_fingerprint(dataset)
    for index in range(2):
        direct = video_entry(dataset, index, small_detector(), "predcls", training=False)
        cached = extracted[index]
        assert set(cached) == set(direct)
        for key, value in direct.items():
            if key in ("features", "union_feat"):
                torch.testing.assert_close(cached[key], value, atol=1e-2, rtol=2e-3)
            elif isinstance(value, list):
                assert cached[key] == value
            else:
                assert torch.equal(cached[key], value), key


class _CountingBuild:
    """Stands in for build_entry: records the videos it is asked for and returns a tiny entry."""

    def __init__(self):
        self.videos = []

    def __call__(self, detector, images, im_info, gt, mode, training, fix_human_row=False, video="?"):
        self.videos.append(video)
        return _synthetic_entry(1)


def test_resume_skips_finished_videos(dataset, tmp_path, monkeypatch):
    build = _CountingBuild()
    monkeypatch.setattr(cache_module, "build_entry", build)
    detector = small_detector()
    extract_features(dataset, detector, tmp_path, "sgdet", training=True, progress=False, num_workers=1)
    assert build.videos == ["V0000.mp4", "V0001.mp4"]
    extract_features(dataset, detector, tmp_path, "sgdet", training=True, progress=False)
    assert len(build.videos) == 2
    os.remove(tmp_path / "V0001.mp4.safetensors")
    cache = extract_features(dataset, detector, tmp_path, "sgdet", training=True, progress=False)
    assert build.videos[2:] == ["V0001.mp4"] and cache.missing() == []
    extract_features(dataset, detector, tmp_path, "sgdet", training=True, resume=False, progress=False)
    assert len(build.videos) == 5
    with pytest.raises(ValueError, match="mode"):
        extract_features(dataset, detector, tmp_path, "predcls", training=True, progress=False)


def test_phase_must_be_known(dataset, tmp_path):
    no_split = type("NoSplit", (), {"data_path": dataset.data_path, "video_list": dataset.video_list,
                                    "gt_annotations": dataset.gt_annotations})()
    with pytest.raises(ValueError, match="training=True/False"):
        extract_features(no_split, small_detector(), tmp_path, "sgdet", progress=False)
    with pytest.raises(ValueError, match="dtype"):
        extract_features(dataset, small_detector(), tmp_path, "sgdet", dtype=torch.bfloat16, progress=False)
    with pytest.raises(TypeError, match="data_path"):
        extract_features(object(), small_detector(), tmp_path, "sgdet", progress=False)


def test_corrupted_files_name_file_and_video(extracted, tmp_path):
    path = extracted.path("V0001.mp4")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in os.listdir(extracted.out_dir):
        data = open(os.path.join(extracted.out_dir, name), "rb").read()
        (damaged / name).write_bytes(data[: len(data) // 2] if name == os.path.basename(path) else data)
    cache = FeatureCache(damaged)
    with pytest.raises(CacheCorruptedError, match=r"V0001\.mp4\.safetensors \(video V0001\.mp4\)"):
        cache.load("V0001.mp4")
    cache.load("V0000.mp4")
    (damaged / "index.json").write_text("{not json")
    with pytest.raises(CacheCorruptedError, match="index.json"):
        FeatureCache(damaged)
    with pytest.raises(FileNotFoundError):
        FeatureCache(tmp_path / "nothing")


def test_video_entry_source_is_transparent(dataset, extracted, tmp_path):
    from_cache = VideoEntrySource(dataset, "predcls", cache=extracted.out_dir)
    assert len(from_cache) == 2 and torch.equal(from_cache[1]["boxes"], extracted[1]["boxes"])
    index = json.loads(open(os.path.join(extracted.out_dir, "index.json")).read())
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "index.json").write_text(json.dumps(index))
    only_cache = VideoEntrySource(dataset, "predcls", cache=partial)
    with pytest.raises(KeyError, match="V0000.mp4"):
        only_cache[0]
    mixed = VideoEntrySource(dataset, "predcls", cache=partial, detector=small_detector(), write_back=True)
    computed = mixed[0]
    assert os.path.isfile(partial / "V0000.mp4.safetensors")
    torch.testing.assert_close(computed["features"], extracted[0]["features"], atol=1e-2, rtol=2e-3)
    with pytest.raises(ValueError, match="holds predcls test entries"):
        VideoEntrySource(dataset, "sgcls", cache=extracted)


def test_reading_a_cache_does_not_need_torchvision(extracted):
    import subprocess
    import sys

    code = ("import sys; sys.modules['torchvision'] = None\n"
            "from fremure.data.cache import FeatureCache\n"
            f"entry = FeatureCache({extracted.out_dir!r})['V0000.mp4']\n"
            "assert entry['features'].shape[1] == 2048\n"
            "try:\n    import fremure.data.detector\nexcept ImportError as err:\n    print(err)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fremure[detector]" in result.stdout
