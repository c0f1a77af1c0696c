"""DistributedDataParallel training: 2 CPU processes (gloo, torchrun) against one process.

The 2-process run goes through ``fremure.cli.main(["train", ...])`` under
``python -m torch.distributed.run --nproc_per_node=2`` (tests/distributed_worker.py records what the
processes did); the 1-process run is a Trainer in this process on the same caches and config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

import distributed_worker
from train_support import small_config
from fremure.train import distributed as dist_utils
from fremure.train.run import make_trainer
from fremure.train.trainer import Trainer, epoch_order, sampler_seed
from fremure.runs import model_tensors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ sharding and batch-norm merging (in process)
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("num", [1, 5, 6, 7])
def test_rank_shares_interleave_the_single_process_order(world, num):
    order = epoch_order(num, seed=3, epoch=2)
    assert sorted(order) == list(range(num))
    shares = [dist_utils.rank_share(num, sampler_seed(3), 2, world=world, rank_index=r) for r in range(world)]
    assert len({len(s) for s in shares}) == 1                       # every rank has the same number of places
    merged = [shares[place % world][place // world] for place in range(len(shares[0]) * world)]
    assert merged[:num] == order                                   # place p of the global order is on rank p % N
    assert merged[num:] == (order * world)[:len(merged) - num]     # DistributedSampler pads with the first videos
    assert epoch_order(num, 3, 3) != order or num == 1


def test_running_stats_merger_reproduces_the_sequential_update():
    """Videos recorded out of order, each from the step's starting statistics as on separate ranks,
    one of them calling the layer twice: the merge equals the in-order update of one process."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(4, momentum=0.1))
    batches = [torch.randn(6, 4) * (i + 1) + i for i in range(3)]
    calls = [1, 2, 1]

    def run(i):
        for _ in range(calls[i]):
            model(batches[i])

    start = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(3):
        run(i)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(start)
    merger = dist_utils.RunningStatsMerger(model)
    merger.begin(3)
    for i in (2, 0, 1):
        model.load_state_dict(start)
        before = merger.snapshot()
        run(i)
        merger.record(i, before)
    merger.finish()
    got = model.state_dict()
    assert int(got["0.num_batches_tracked"]) == int(expected["0.num_batches_tracked"]) == 4
    for key in ("0.running_mean", "0.running_var"):
        assert torch.allclose(got[key], expected[key], rtol=1e-6, atol=1e-7), key
        assert not torch.allclose(got[key], start[key], rtol=1e-3)


def test_videos_per_step_must_be_a_multiple_of_the_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(dist_utils, "world_size", lambda: 2)
    with pytest.raises(ValueError, match=r"videos_per_step \(3\) must be a multiple of the number of processes \(2\)"):
        make_trainer(small_config(str(tmp_path), videos_per_step=3))


# ------------------------------------------------------------------ 2 processes against 1
def _torchrun(out: str, config_file: str, nonfinite: str = "") -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "tests"), *sys.path]),
               OMP_NUM_THREADS="1", FREMURE_TEST_NONFINITE=nonfinite)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               os.path.join(REPO, "tests", "distributed_worker.py"), out, "train", "--config", config_file]
    return subprocess.Popen(command, env=env, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_gloo_processes_train_like_one(tmp_path, monkeypatch):
    """3 videos, 2 per step (the second step leaves rank 1 without a video: zero-weight pass), 2
    epochs (memory rebuilt from the merged batch-norm statistics, then used by epoch 1). In epoch
    1 (order 1, 2, 0) video 2, rank 1's only video of the first step, gives a NaN loss: rank 1
    skips it and joins the all-reduce with a zero-weight pass of its last finite video, as one
    process skips it and averages over the step's 2 places.

    Both runs use one thread per process, so each video's forward and backward are the same
    computation; what may differ is rounding: gloo's gradient sum, the float64 merge of batch-norm
    statistics, the memory sums. Epoch 0 comes out bitwise equal here; the memory's rounding then
    reaches epoch 1. SGD keeps such differences at the rounding level (Adam's normalised step would
    turn a rounding-level difference of a near-zero gradient into a full learning-rate step).
    """
    run_dir = tmp_path / "ddp"
    run_dir.mkdir()
    common = dict(nepoch=2, max_train_videos=3, max_test_videos=1, videos_per_step=2, optimizer="sgd", lr=1e-2)
    config = small_config(str(run_dir), checkpoints="all", tensorboard=True, **common)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    assert epoch_order(3, config.seed, 1) == [1, 2, 0]
    launched = _torchrun(str(run_dir), str(config_file), nonfinite="1:2")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(Trainer, "_forward_loss", Trainer._forward_loss)     # undone after the test
        distributed_worker.poison(1, 2)
        reference = make_trainer(small_config(str(tmp_path / "single"), checkpoints="none", **common))
        start = {k: v.clone() for k, v in model_tensors(reference.model).items()}
        reference_losses = []
        reference.fit(on_step=lambda trainer: reference_losses.append(trainer.step_loss))
        output, _ = launched.communicate(timeout=600)
    finally:
        torch.set_num_threads(threads)
        if launched.poll() is None:
            launched.kill()
    assert launched.returncode == 0, output[-4000:]
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["ddp"] == "DistributedDataParallel"
    assert [r["code"] for r in ranks] == [0, 0] and ranks[0]["threads"] == 1

    # per-step losses: all-reduced, so both ranks report the step's mean over its videos
    assert len(reference_losses) == 4 and None not in reference_losses
    assert ranks[0]["losses"] == ranks[1]["losses"]
    skip = [(s["epoch"], s["step"], s["video"]) for s in reference.skipped]
    assert skip == [(1, 2, 2)]
    assert [[(s["epoch"], s["step"], s["video"]) for s in r["skipped"]] for r in ranks] == [skip, skip]
    assert ranks[0]["losses"] == pytest.approx(reference_losses, rel=1e-6, abs=0)     # measured: 0 to 7e-8

    # both ranks hold the same weights, batch-norm statistics and memory, equal to the 1-process run
    weights = [load_file(str(run_dir / f"rank{r}.safetensors")) for r in range(2)]
    single = model_tensors(reference.model)
    assert weights[0].keys() == weights[1].keys() == single.keys()
    assert any(k.startswith("memory.") for k in single)
    moved = [k for k in start if k.startswith("model.") and not torch.equal(start[k], single[k])]
    assert len(moved) > 50, moved
    for key in single:
        assert torch.equal(weights[0][key], weights[1][key]), key
        # 1e-5 of the tensor's largest value (~170 float32 rounding steps of it): measured up to
        # 3e-7 of it (the memory); unsynchronised gradients are off by a large part of the update
        difference = float((weights[0][key].double() - single[key].double()).abs().max())
        assert difference <= 1e-5 * float(single[key].double().abs().max()), (key, difference)

    # only rank 0 wrote checkpoints, TensorBoard events, history and printed the summary
    assert ranks[1]["saves"] == [] and ranks[1]["stdout"] == ""
    assert ranks[0]["saves"].count("last") == 2 and "epoch 1:" in ranks[0]["stdout"]
    events = [f for _, _, files in os.walk(run_dir / "tensorboard") for f in files if "tfevents" in f]
    assert len(events) == 1, events
    assert len((run_dir / "history.jsonl").read_text().splitlines()) == 2
    assert (run_dir / "config.yaml").is_file() and "epoch 1: loss" in (run_dir / "train.log").read_text()

    # rank 0's checkpoint loads into a single-process trainer (same keys, resumable state)
    restored = make_trainer(small_config(str(tmp_path / "restored"), checkpoints="none", **common))
    restored.restore(str(run_dir / "checkpoints" / "last.json"))
    assert restored.epoch == 2 and restored.step == 4
    for key, value in model_tensors(restored.model).items():
        assert torch.equal(value, weights[0][key]), key
