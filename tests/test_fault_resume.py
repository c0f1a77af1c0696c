"""Fault test of `fremure train`: one run is killed with SIGKILL three times (mid-epoch after a
checkpoint, during a checkpoint write, right after one) and resumed each time; its end state must
equal an uninterrupted run's: model and optimiser tensors bitwise, every history.jsonl field exact
(the timing fields only plausible). Each run is a real `python -m fremure`-like process."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from train_support import sample_caches
from fremure.train import load_checkpoint

# The command line of `fremure train`, with each tensor-file write held open for 0.3 s afterwards
# (under its temporary name), so that a kill during the write is hit reliably; nothing else changes.
DRIVER = """
import sys, time
from fremure.train import checkpoint
plain_save = checkpoint.save_file
def held_save(tensors, path, *args, **kwargs):
    plain_save(tensors, path, *args, **kwargs)
    time.sleep(0.3)
checkpoint.save_file = held_save
from fremure.cli import main
raise SystemExit(main(sys.argv[1:]))
"""
TIMING = ("seconds", "videos_per_s")
TRAIN_VIDEOS = 2


def _args(save_path: pathlib.Path, *extra: str) -> list[str]:
    data, train, test = sample_caches()
    return ["train", "--data-path", data, "--train-cache", train, "--test-cache", test, "--save-path", str(save_path),
            "--dec-layer", "1", "--keep-unused", "false", "--max-train-videos", str(TRAIN_VIDEOS),
            "--max-test-videos", "1", "--lr", "1e-4", "--nepoch", "2", "--save-every", "1", "--checkpoints", "last",
            "--deterministic", "true", "--progress", "false", "--tensorboard", "false", *extra]


def _start(args: list[str]) -> subprocess.Popen:
    # the interpreter's own path: the fremure this test imported (an installed wheel in CI, the
    # checkout's python/ with an in-place build in development), not the sources of the checkout
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="2")
    return subprocess.Popen([sys.executable, "-c", DRIVER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _last_state(folder: pathlib.Path) -> dict | None:
    try:
        return json.loads((folder / "last.json").read_text())["state"]
    except (OSError, ValueError):
        return None


def _kill_when(process: subprocess.Popen, condition, what: str, limit: float = 600.0) -> None:
    """SIGKILLs ``process`` as soon as ``condition()`` holds (polled every 5 ms)."""
    deadline = time.monotonic() + limit
    while not condition():
        if process.poll() is not None:
            output = process.stdout.read()
            pytest.fail(f"the run ended (exit {process.returncode}) before the kill point '{what}':\n{output}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"kill point '{what}' not reached in {limit} s")
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL


def _finish(args: list[str]) -> None:
    process = _start(args)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output


def _history(run: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_killed_three_times_and_resumed_equals_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finish(_args(straight))

    checkpoints = killed / "checkpoints"
    process = _start(_args(killed))
    _kill_when(process, lambda: (_last_state(checkpoints) or {}).get("position", 0) > 0, "mid-epoch, after 'last'")

    process = _start(_args(killed, "--resume"))
    _kill_when(process, lambda: any(n.startswith(".tmp-") for n in os.listdir(checkpoints)), "during a write")
    leftovers = [n for n in os.listdir(checkpoints) if n.startswith(".tmp-")]
    assert leftovers                    # what the kill left; the next start must clear it

    before = (checkpoints / "last.json").read_text()
    process = _start(_args(killed, "--resume"))
    _kill_when(process, lambda: (checkpoints / "last.json").read_text() != before, "after a write of 'last'")

    _finish(_args(killed, "--resume"))
    assert not [n for n in os.listdir(checkpoints) if n.startswith(".tmp-")]

    expected = load_checkpoint(str(straight / "checkpoints" / "last.json"))
    got = load_checkpoint(str(checkpoints / "last.json"))
    for kind, want, have in (("model", expected[1], got[1]), ("train", expected[2], got[2])):
        assert want.keys() == have.keys(), kind
        for key in want:
            assert want[key].dtype == have[key].dtype and bool((want[key] == have[key]).all()), (kind, key)
    for key in ("epoch", "position", "step", "best", "scheduler", "optimizer", "skipped"):
        assert got[0][key] == expected[0][key], key

    want_history, got_history = _history(straight), _history(killed)
    assert [r["epoch"] for r in got_history] == [0, 1]
    for want, have in zip(want_history, got_history):
        assert {k: v for k, v in have.items() if k not in TIMING} == {k: v for k, v in want.items() if k not in TIMING}
        assert have["videos_per_s"] == pytest.approx(TRAIN_VIDEOS / have["seconds"], rel=1e-12)
