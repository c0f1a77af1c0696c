"""What fremure promises about runs and inputs (docs/reliability.md): no silent overwrite of a run,
resume with changed options, validated annotations, content checks of check-data and frames,
verified cache entries, cleaned leftovers, one-line errors with exit code 2 for damaged input."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import pickle
import shutil
import types

import numpy as np
import pytest
import torch

from train_support import SAMPLE_DETECTOR, sample_caches
from video_support import copy_annotations
from fremure.cli import main
from fremure.data.synthetic import sample_path
from fremure.pipeline import load_split
from fremure.train import checkpoint as checkpoint_module
from fremure.train.trainer import Trainer

SAMPLE = sample_path()


def _train_args(save_path, *extra: str) -> list[str]:
    data, train, test = sample_caches()
    return ["train", "--data-path", data, "--train-cache", train, "--test-cache", test, "--save-path", str(save_path),
            "--dec-layer", "1", "--keep-unused", "false", "--max-train-videos", "2", "--max-test-videos", "1",
            "--lr", "1e-4", "--nepoch", "1", "--rel-mem-compute", "none", "--checkpoints", "last",
            "--progress", "false", "--tensorboard", "false", *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One finished 1-epoch run (2 videos), copied by the tests that change it."""
    run = tmp_path_factory.mktemp("run") / "run"
    assert main(_train_args(run)) == 0
    return run


def _copy(run: pathlib.Path, tmp_path) -> pathlib.Path:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------ 1: no silent overwrite
def test_new_run_in_a_folder_holding_a_run_is_refused(run_dir, tmp_path, capsys):
    run = _copy(run_dir, tmp_path)
    before = _snapshot(run)
    assert main(_train_args(run)) == 2
    err = _error_line(capsys)
    assert str(run) in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(run) == before            # nothing deleted, nothing appended to train.log


def test_overwrite_removes_only_the_old_runs_entries(tmp_path):
    from fremure.train.run_folder import prepare_new_run
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.json").write_text("{}")
    for name in ("history.jsonl", "config.yaml", "train.log", "notes.txt"):
        (run / name).write_text("old")
    assert sorted(prepare_new_run(str(run), overwrite=True)) == ["checkpoints", "config.yaml", "history.jsonl",
                                                                 "train.log"]
    assert sorted(os.listdir(run)) == ["notes.txt"]
    assert prepare_new_run(str(tmp_path / "new"), overwrite=False) == []


# ------------------------------------------------------------------ 3: resume with changed options
def test_resume_refuses_options_that_cannot_change_and_keeps_config_yaml(run_dir, tmp_path, capsys):
    run = _copy(run_dir, tmp_path)
    config_yaml = (run / "config.yaml").read_bytes()
    assert main(["train", "--save-path", str(run), "--resume", "--nepoch", "2", "--dec-layer", "2",
                 "--seed", "3"]) == 2
    err = _error_line(capsys)
    assert "--model.dec-layer 1 -> 2" in err and "--seed 0 -> 3" in err and "--nepoch" not in err.split("(only")[0]
    assert (run / "config.yaml").read_bytes() == config_yaml

    record = json.loads((run / "checkpoints" / "last.json").read_text())
    train_file = run / "checkpoints" / record["files"]["train"]["name"]
    train_file.write_bytes(train_file.read_bytes()[:-10])        # a damaged checkpoint: the resume fails
    assert main(["train", "--save-path", str(run), "--resume", "--nepoch", "2", "--lr", "2e-4"]) == 2
    assert "corrupted" in capsys.readouterr().err.strip().splitlines()[-1]
    assert (run / "config.yaml").read_bytes() == config_yaml


def test_resume_applies_and_records_a_new_lr_and_nepoch(run_dir, tmp_path, capsys):
    from fremure.train.config import read_config_file
    run = _copy(run_dir, tmp_path)
    # the checkpoint's configuration is the base: only the changed options need to be given
    assert main(["train", "--save-path", str(run), "--resume", "--nepoch", "2", "--lr", "2e-4"]) == 0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1]
    assert history[0]["lr"] == 1e-4 and history[1]["lr"] == 2e-4
    assert read_config_file(run / "config.yaml")["lr"] == 2e-4
    assert json.loads((run / "checkpoints" / "last.json").read_text())["state"]["config"]["lr"] == 2e-4
    capsys.readouterr()


# ------------------------------------------------------------------ 4: wrong-typed annotations
def _ag_copy(tmp_path) -> pathlib.Path:
    root = copy_annotations(SAMPLE, tmp_path / "ag")
    shutil.copytree(SAMPLE / "frames", root / "frames")
    return root


def _rewrite(path: pathlib.Path, change) -> None:
    with open(path, "rb") as handle:
        data = pickle.load(handle)          # the bundled sample: trusted
    with open(path, "wb") as handle:
        pickle.dump(change(data), handle)


def test_string_person_boxes_fail_every_command_with_a_count(tmp_path, capsys, caplog):
    root = _ag_copy(tmp_path)
    _rewrite(root / "annotations" / "person_bbox.pkl", lambda d: {k: "box" for k in d})
    assert main(["check-data", "--data-path", str(root), "--mode", "predcls"]) == 2
    out = capsys.readouterr().out
    assert "annotations (train, full object pickle): no usable video" in out
    assert "frames and 0 objects dropped for malformed annotations (bad_person_entry" in out
    with caplog.at_level("WARNING", logger="fremure.data.ag"), pytest.raises(ValueError, match="no usable video"):
        load_split(str(root), "train", "predcls")
    assert any("dropped for malformed annotations" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)
    assert main(["freq", "--data-path", str(root), "--out", str(tmp_path / "freq")]) == 2
    warning, error = capsys.readouterr().err.strip().splitlines()[-2:]     # the count, then the error
    assert "99 frames and 0 objects dropped" in warning
    assert error.startswith("fremure freq: error: the AG train split") and "no usable video" in error
    assert not (tmp_path / "freq" / "predicate_frequencies.safetensors").exists()


def test_objects_without_their_keys_are_reported(tmp_path, capsys):
    root = _ag_copy(tmp_path)

    def strip(data):
        return {k: [{"metadata": o["metadata"]} for o in v] for k, v in data.items()}

    _rewrite(root / "annotations" / "object_bbox_and_relationship.pkl", strip)
    assert main(["check-data", "--data-path", str(root), "--mode", "predcls"]) == 2
    out = capsys.readouterr().out
    assert "no usable video" in out and "object_without_visible" in out


def test_history_lines_are_strict_json(tmp_path):
    """A NaN recall or loss is written as null (bare NaN is not JSON)."""
    holder = types.SimpleNamespace(history_path=str(tmp_path / "history.jsonl"),
                                   history=[{"epoch": 0, "loss": float("nan"), "R": {"20": float("inf")}}])
    Trainer._append_history(holder, {"epoch": 1, "loss": None, "R@20": float("nan")})
    Trainer._rewrite_history(holder)
    Trainer._append_history(holder, {"epoch": 1, "loss": None, "R@20": float("nan")})
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    parse = json.JSONDecoder(parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert [parse.decode(line) for line in lines] == [{"epoch": 0, "loss": None, "R": {"20": None}},
                                                      {"epoch": 1, "loss": None, "R@20": None}]


def test_checkpoint_json_is_strict_and_gives_back_non_finite_state(tmp_path):
    """A fresh ReduceLROnPlateau holds best = -inf: the checkpoint JSON stays strict and the resume
    gets -inf back (not null, which would break the scheduler's comparison)."""
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1)], lr=1.0), mode="max")
    state = {"scheduler": scheduler.state_dict(), "losses": [float("nan"), 1.5, float("inf")]}
    path = checkpoint_module.save_checkpoint(str(tmp_path), "last", {"w": torch.ones(2)}, state)
    parse = json.JSONDecoder(parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    parse.decode(pathlib.Path(path).read_text())
    loaded, _, _ = checkpoint_module.load_checkpoint(path)
    assert loaded["scheduler"]["best"] == float("-inf")
    assert loaded["losses"][1:] == [1.5, float("inf")] and loaded["losses"][0] != loaded["losses"][0]
    restored = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1)], lr=1.0), mode="max")
    restored.load_state_dict(loaded["scheduler"])
    restored.step(0.5)
    assert restored.best == 0.5


# ------------------------------------------------------------------ 5: check-data checks content
@pytest.mark.parametrize("damage", ["truncated", "malicious"])
def test_check_data_loads_the_pickles(tmp_path, capsys, damage):
    root = _ag_copy(tmp_path)
    path = root / "annotations" / "object_bbox_and_relationship.pkl"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(pickle.dumps(types.SimpleNamespace(x=1)))
    assert main(["check-data", "--data-path", str(root), "--mode", "predcls"]) == 2
    out = capsys.readouterr().out
    assert "cannot be loaded" in out and str(path) in out
    assert ("not a valid annotation pickle" if damage == "truncated" else "refusing to load global") in out


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_damaged_frames_count_as_missing(tmp_path, capsys, damage):
    root = _ag_copy(tmp_path)
    frame = sorted((root / "frames").glob("*/*.png"))[0]
    data = frame.read_bytes()
    frame.write_bytes({"empty": b"", "garbage": os.urandom(len(data)), "truncated": data[: len(data) // 2]}[damage])
    assert main(["check-data", "--data-path", str(root), "--mode", "predcls"]) == 2
    assert f"{frame.parent.name}/{frame.name}" in capsys.readouterr().out
    assert main(["frames", "--data-path", str(root), "--verify"]) == 2
    out = capsys.readouterr().out
    assert f"{frame.parent.name}: 1 missing ({frame.name})" in out


def test_frames_redumps_a_zero_byte_png(tmp_path):
    pytest.importorskip("av")
    from fremure.data.frames import dump_video
    from video_support import encode_video, sample_frames
    video, frames = next(iter(sample_frames(SAMPLE).items()))
    encode_video(tmp_path / video, frames)
    out = tmp_path / "frames" / video
    assert dump_video(tmp_path / video, out, sorted(frames)).ok
    first = out / f"{min(frames):06d}.png"
    good = first.read_bytes()
    first.write_bytes(b"")
    result = dump_video(tmp_path / video, out, sorted(frames))
    assert result.ok and not result.skipped and result.written == 1
    assert first.read_bytes() == good


# ------------------------------------------------------------------ 6: verified cache entries
def test_extract_redoes_a_truncated_cache_entry(tmp_path, caplog):
    from detector_fakes import small_detector
    from fremure.data.cache import FeatureCache, read_entry_file
    from fremure.pipeline import extract_split
    _, train, _ = sample_caches()
    cache_dir = tmp_path / "cache"
    shutil.copytree(train, cache_dir)
    cache = FeatureCache(cache_dir)
    victim = pathlib.Path(cache.path(0))
    good = read_entry_file(victim)
    victim.write_bytes(victim.read_bytes()[:-100])
    other = pathlib.Path(cache.path(1))
    (cache_dir / f"{other.name}.tmp-99999").write_bytes(b"partial")     # a killed extraction's temporary
    before = other.stat().st_mtime_ns
    with caplog.at_level("WARNING", logger="fremure.data.cache"):
        extract_split(str(SAMPLE), "train", "predcls", small_detector(0, SAMPLE_DETECTOR), str(cache_dir),
                      progress=False)
    # the file is whole again: the same fields, shapes and labels (RoI features are recomputed, and
    # are not bitwise repeatable across extractions)
    again = read_entry_file(victim)
    assert again.keys() == good.keys()
    for key, value in good.items():
        if isinstance(value, torch.Tensor):
            assert again[key].shape == value.shape and again[key].dtype == value.dtype, key
            assert value.is_floating_point() or torch.equal(again[key], value), key
        else:
            assert again[key] == value, key
    assert torch.equal(again["boxes"], good["boxes"])
    assert other.stat().st_mtime_ns == before                              # sound entries are kept
    assert not list(cache_dir.glob("*.tmp-*"))
    assert any("1 damaged entries" in r.getMessage() for r in caplog.records)


def test_extract_dtype_mismatch_names_the_flag(tmp_path):
    from detector_fakes import small_detector
    from fremure.pipeline import extract_split
    _, train, _ = sample_caches()
    shutil.copytree(train, tmp_path / "cache")
    with pytest.raises(ValueError, match="rerun with --dtype float32 to continue it"):
        extract_split(str(SAMPLE), "train", "predcls", small_detector(0, SAMPLE_DETECTOR), str(tmp_path / "cache"),
                      dtype="float16", progress=False)


# ------------------------------------------------------------------ 7: leftovers and messages
def test_leftovers_of_a_killed_checkpoint_write_are_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    path = checkpoint_module.save_checkpoint(str(folder), "last", {"w": torch.ones(3)}, {"epoch": 0},
                                             {"optim.0.exp_avg": torch.zeros(3)})
    (folder / ".tmp-abc123").write_bytes(b"x" * 1000)
    (folder / "last-0123456789ab.model.safetensors").write_bytes(b"x" * 1000)   # written, never committed
    (folder / "best_recall-0123456789ab.model.safetensors").write_bytes(b"x")
    (folder / "broken.json").write_text("{")                                     # its files are left alone
    (folder / "broken-0123456789ab.model.safetensors").write_bytes(b"x")
    removed = checkpoint_module.clean_checkpoint_folder(str(folder))
    assert removed == [".tmp-abc123", "best_recall-0123456789ab.model.safetensors",
                       "last-0123456789ab.model.safetensors"]
    assert "broken-0123456789ab.model.safetensors" in os.listdir(folder)
    checkpoint_module.load_checkpoint(path)                                       # the committed one still loads


def test_disk_full_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    def full(tensors, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", full)
    with pytest.raises(OSError, match=r"cannot write .*last-\w+\.model\.safetensors: No space left") as info:
        checkpoint_module.save_checkpoint(str(tmp_path), "last", {"w": torch.ones(3)}, {"epoch": 0})
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, flag", [
    (["eval", "--max-videos", "-3"], "--max-videos"),
    (["eval", "--report-frames", "-1"], "--report-frames"),
])
def test_negative_counts_are_refused(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as info:
        main([argv[0], "--data-path", str(SAMPLE), "--checkpoint", "x.json", "--out", str(tmp_path), *argv[1:]])
    assert info.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("flags, text", [
    (["--device", "cpu:7"], "'cpu:7'"),
    (["--clip", "inf"], "'clip' must be a positive finite number"),
])
def test_impossible_training_options_are_refused(tmp_path, capsys, flags, text):
    assert main(["train", "--save-path", str(tmp_path), *flags, "--print-config"]) == 2
    assert text in _error_line(capsys)


def test_outputs_naming_a_file_are_one_line_errors(tmp_path, capsys):
    existing = tmp_path / "file"
    existing.write_text("x")
    for argv in (["train", "--data-path", str(SAMPLE), "--save-path", str(existing)],
                 ["extract", "--data-path", str(SAMPLE), "--out", str(existing)],
                 ["freq", "--data-path", str(SAMPLE), "--out", str(existing)],
                 ["eval", "--data-path", str(SAMPLE), "--checkpoint", "x.json", "--out", str(existing)]):
        assert main(argv) == 2, argv
        assert f"{existing} is a file, not a folder" in _error_line(capsys)


def test_truncated_pickle_is_exit_code_2(tmp_path, capsys):
    root = _ag_copy(tmp_path)
    path = root / "annotations" / "person_bbox.pkl"
    path.write_bytes(path.read_bytes()[:100])
    assert main(["freq", "--data-path", str(root), "--out", str(tmp_path / "freq")]) == 2
    assert str(path) in _error_line(capsys)


def test_head_mismatch_names_the_options(run_dir, tmp_path, capsys):
    _, _, test = sample_caches()
    assert main(["eval", "--data-path", str(SAMPLE), "--test-cache", test, "--checkpoint",
                 str(run_dir / "checkpoints" / "last.json"), "--out", str(tmp_path), "--rel-head", "gmm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]       # after the device line
    assert "rel_head: checkpoint 'bayesian', asked 'gmm'" in err and len(err) < 400
