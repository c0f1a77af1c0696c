"""Training: losses, memory rebuild, checkpoints (atomic, verified), exact resume, learning, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from train_support import sample_caches, small_config
from fremure.train import (CheckpointError, MemoryAccumulator, TrainConfig, load_checkpoint, make_config,
                           read_config_file, relation_losses, save_checkpoint)
from fremure.train import checkpoint as checkpoint_module
from fremure.train.run import make_trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ losses and memory (no model)
def _entry(p: int = 3) -> dict:
    return {"attention_distribution": torch.randn(p, 3), "spatial_distribution": torch.rand(p, 6),
            "contacting_distribution": torch.rand(p, 17), "attention_gt": [[i % 3] for i in range(p)],
            "spatial_gt": [[0, 2]] * p, "contacting_gt": [[5]] * p}


def test_losses_match_torch_definitions():
    entry = _entry()
    losses = relation_losses(entry, "predcls", rel_head="bayesian")
    assert set(losses) == {"attention_relation_loss", "spatial_relation_loss", "contact_relation_loss"}
    expected = torch.nn.functional.cross_entropy(entry["attention_distribution"], torch.tensor([0, 1, 2]))
    assert torch.allclose(losses["attention_relation_loss"], expected)
    target = torch.zeros(3, 6)
    target[:, [0, 2]] = 1
    assert torch.allclose(losses["spatial_relation_loss"],
                          torch.nn.functional.binary_cross_entropy(entry["spatial_distribution"], target))
    margin = relation_losses(entry, "predcls", spatial_loss="mlm")["spatial_relation_loss"]
    mlm_target = torch.tensor([[0, 2, -1, -1, -1, -1]] * 3)
    assert torch.allclose(margin, torch.nn.functional.multilabel_margin_loss(entry["spatial_distribution"], mlm_target))


def test_single_pair_and_object_loss():
    entry = _entry(1)
    entry.update(distribution=torch.randn(2, 37), labels=torch.tensor([1, 5]))
    losses = relation_losses(entry, "sgcls")
    assert losses["attention_relation_loss"].dim() == 0 and "object_loss" in losses
    entry["attention_gt"] = [[0, 1]]
    with pytest.raises(ValueError, match="exactly one attention label"):
        relation_losses(entry, "predcls")


def test_memory_accumulator_is_streamed_weighted_mean():
    freqs = {"attention": torch.tensor([0.5, 0.3, 0.2]), "spatial": torch.full((6,), 1 / 6),
             "contacting": torch.full((17,), 1 / 17)}
    acc = MemoryAccumulator(4, freqs, temperature=0.5)
    feats = torch.arange(12.0).view(3, 4)
    entry = {"attention_gt": [[0], [0], [2]], "spatial_gt": [[1], [], [1]], "contacting_gt": [[], [], []],
             "attention_features": feats, "spatial_features": feats, "contacting_features": feats,
             # post-memory features (late fusion) must not feed the rebuild
             "attention_mem_features": -feats, "spatial_mem_features": -feats, "contacting_mem_features": -feats}
    acc.add_video(entry)
    memory = acc.prototypes()
    # class 0 of attention: two equal-weight entries -> plain mean; class 2: its single pair
    assert torch.allclose(memory["attention"][0], feats[:2].mean(0))
    assert torch.allclose(memory["attention"][2], feats[2])
    assert torch.equal(memory["attention"][1], torch.zeros(4))
    assert torch.allclose(memory["spatial"][1], feats[[0, 2]].mean(0))


# ------------------------------------------------------------------ checkpoint files
def test_checkpoint_roundtrip_corruption_and_failed_save(tmp_path, monkeypatch):
    folder = str(tmp_path)
    first = {"w": torch.arange(6.0)}
    path = save_checkpoint(folder, "last", first, {"epoch": 1}, {"optim.0.exp_avg": torch.ones(2)})
    state, tensors, train = load_checkpoint(path)
    assert state == {"epoch": 1} and torch.equal(tensors["w"], first["w"]) and "optim.0.exp_avg" in train

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(folder, "last", {"w": torch.zeros(6)}, {"epoch": 2})
    monkeypatch.undo()
    state, tensors, _ = load_checkpoint(path)            # the previous checkpoint is intact
    assert state["epoch"] == 1 and torch.equal(tensors["w"], first["w"])
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp-")]

    model_file = os.path.join(folder, json.load(open(path))["files"]["model"]["name"])
    with open(model_file, "r+b") as handle:
        handle.seek(-3, os.SEEK_END)
        handle.write(b"\xff\xff\xff")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)
    with open(path, "w") as handle:
        handle.write("{not json")
    with pytest.raises(CheckpointError, match="unreadable or corrupted"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(os.path.join(folder, "nothing.json"))


# ------------------------------------------------------------------ configuration
def test_config_validation_and_file_override(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("lr: 0.001\nnepoch: 4\nrel-head: gmm_plus\nfreq: false\n")
    config = make_config(read_config_file(good), {"nepoch": 2})
    assert (config.lr, config.nepoch, config.model.rel_head, config.model.freq) == (1e-3, 2, "gmm_plus", False)
    assert TrainConfig().lr == 1e-5 and TrainConfig().nepoch == 10 and TrainConfig().model.rel_head == "bayesian"
    cases = {"lr: abc\n": "'lr' must be a number", "mode: detection\n": "'mode' must be one of",
             "nepoch: 0\n": "'nepoch' must be a positive integer", "freq: 'False'\n": "'freq' must be true or false",
             "learning_rate: 1\n": "unknown option 'learning_rate'", "- 1\n- 2\n": "must hold a mapping",
             "lr: [1\n": "not valid YAML", "dropout: 2\n": "'dropout' must lie in",
             "tracking: true\n": "\\['tracking'\\] need mode sgcls or sgdet", "tracking: 1\n": "must be true or false"}
    for text, message in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            make_config(read_config_file(bad))


# ------------------------------------------------------------------ training runs
class Killed(Exception):
    pass


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path):
    config = small_config(str(tmp_path / "a"), checkpoints="none", max_train_videos=3, max_test_videos=1)
    reference = make_trainer(config)
    reference.fit()

    config_b = small_config(str(tmp_path / "b"), save_every=2, max_train_videos=3, max_test_videos=1)
    victim = make_trainer(config_b)

    def kill(trainer):
        if trainer.step == 1:
            time.sleep(1.0)             # training time before the kill, which the resumed epoch must count
        if trainer.step == 2:
            raise Killed

    with pytest.raises(Killed):
        victim.fit(on_step=kill)
    resumed = make_trainer(config_b)
    assert (json.load(open(tmp_path / "b" / "checkpoints" / "last.json"))["state"]["position"]) == 2
    resumed.fit(resume=True)
    expected, got = _weights(reference), _weights(resumed)
    assert expected.keys() == got.keys()
    # Training on the ops path is bitwise reproducible (fixed-chunk reductions, index_select
    # gathers), so a resumed run must give exactly the uninterrupted run's weights and memory.
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    for kind in ("attention", "spatial", "contacting"):
        assert torch.equal(resumed.model.rel_memory[kind], reference.model.rel_memory[kind]), kind
    assert resumed.epoch == 1 and resumed.history[0]["R@20"] == reference.history[0]["R@20"]
    # the epoch's loss covers its three videos, not only the one trained after the restart
    assert resumed.history[0]["loss"] == reference.history[0]["loss"]
    assert resumed.history[0]["seconds"] >= 1.0
    assert resumed.history[0]["videos_per_s"] == 3 / resumed.history[0]["seconds"]

    # a damaged 'last' is reported, never loaded
    record = json.load(open(tmp_path / "b" / "checkpoints" / "last.json"))
    model_file = tmp_path / "b" / "checkpoints" / record["files"]["model"]["name"]
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        make_trainer(config_b).fit(resume=True)


def test_non_finite_loss_is_skipped_and_not_applied(tmp_path):
    config = small_config(str(tmp_path), checkpoints="none", max_train_videos=1, max_test_videos=1)
    trainer = make_trainer(config)
    before = _weights(trainer)
    source = trainer.train_source

    class Poisoned:
        def __len__(self):
            return len(source)

        def __getitem__(self, index):
            entry = source[index]
            entry["features"] = entry["features"] * float("nan")
            return entry

    trainer.train_source = Poisoned()
    assert trainer.train_step([0]) is None
    assert trainer.skipped and "non-finite" in trainer.skipped[0]["reason"]
    after = _weights(trainer)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed


def test_training_learns_the_synthetic_relations(tmp_path):
    """Fit four training videos: the loss must fall and their recall must beat the untrained model's."""
    config = small_config(str(tmp_path), checkpoints="none", rel_head="linear", rel_mem_compute="none", dropout=0.0,
                          lr=3e-4, nepoch=5, max_train_videos=4)
    trainer = make_trainer(config)
    trainer.test_source, trainer.test_gt = trainer.train_source, trainer.train_source.dataset.gt_annotations
    trainer.config.max_test_videos = 4
    untrained = trainer.validate(("with", "no"))
    history = trainer.fit()
    trained = trainer.validate(("with", "no"))
    assert trained["no"]["R"][20] > untrained["no"]["R"][20] + 0.15
    assert trained["with"]["R"][20] > untrained["with"]["R"][20] + 0.10
    assert len(history) == 5 and trainer.step == 20


def test_tracking_option_builds_the_published_track_encoder():
    from fremure.pipeline import build_model
    model = build_model(make_config(overrides=dict(mode="sgcls", tracking=True, keep_unused=False)), 37, None)
    names = [name for name, _ in model.named_parameters()]
    assert any(name.startswith("object_classifier.encoder_tran.layers.2.") for name in names)
    plain = build_model(make_config(overrides=dict(mode="sgcls", keep_unused=False)), 37, None)
    assert not any("encoder_tran" in name for name, _ in plain.named_parameters())


@pytest.mark.parametrize("metric", ["mR@20", "R@20"])
def test_the_scheduler_steps_on_the_chosen_metric(tmp_path, metric):
    """scheduler_metric: mR@20 (FReMuRe, TEMPURA) or R@20 (STTran) is what ReduceLROnPlateau sees."""
    from train_support import small_config
    from fremure.train.run import make_trainer
    trainer = make_trainer(small_config(tmp_path / "run", scheduler_metric=metric, checkpoints="none",
                                        max_train_videos=1, max_test_videos=1))
    (tmp_path / "run").mkdir()
    seen = []
    trainer.scheduler.step = seen.append
    trainer.validate = lambda: {"with": {"R": {10: 0.1, 20: 0.2, 50: 0.5}, "mR": {10: 0.01, 20: 0.02, 50: 0.05}}}
    trainer.rebuild_memory = lambda: None
    trainer._finish_epoch(1.0, 1, 0.5)
    assert seen == [0.2 if metric == "R@20" else 0.02]
