"""ModelConfig: validation in one place, every option reachable from the command line and YAML and
recorded in checkpoints, old checkpoints still loading, the kernel choice without hidden globals,
and every option combination trained, saved and reloaded with identical predictions."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fremure_ext
from train_support import sample_caches, small_config
from fremure.cli import build_parser, main
from fremure.cli_args import make_train_config
from fremure.model.config import FIELDS, ModelConfig, build_model
from fremure.pipeline import evaluate, frequencies, load_split
from fremure.runs import load_run, model_tensors
from fremure.train import CheckpointError, load_checkpoint, save_checkpoint
from fremure.train.config import config_to_yaml, make_config, read_config_file
from fremure.train.run import make_trainer

# A value other than the default for every ModelConfig field (mode sgcls so that tracking and
# take_obj_mem_feat are allowed).
NON_DEFAULTS = {"name": "fremure", "mode": "sgcls", "rel_head": "gmm_plus", "obj_head": "gmm", "K": 3,
                "enc_layer": 2, "dec_layer": 2, "rel_mem_compute": "seperate", "mem_fusion": "early",
                "mem_feat_lambda": 0.25, "selection": "automated", "obj_mem_compute": True, "take_obj_mem_feat": True,
                "tracking": True, "freq": False, "freq_include_test": False, "decouple": "separate",
                "gate": "log_inverse", "window": 4, "stride": 2, "window_mode": "weighted", "keep_unused": False,
                "dropout": 0.2, "kernels": "reference"}


def _flag_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_every_field_has_a_non_default_here():
    assert set(NON_DEFAULTS) == set(FIELDS)
    for name, value in NON_DEFAULTS.items():
        if name != "name":
            assert value != FIELDS[name].default, name


@pytest.mark.parametrize("nested", [True, False])
def test_every_model_option_is_reachable_from_flags(nested):
    """``--model.NAME VALUE`` and the flat alias ``--NAME VALUE`` (``--model`` for the name)."""
    argv = ["train"]
    for name, value in NON_DEFAULTS.items():
        flag = ("--model.name" if nested else "--model") if name == "name" else \
            ("--model." if nested else "--") + name.replace("_", "-")
        argv += [flag, _flag_value(value)]
    config = make_train_config(build_parser().parse_args(argv))
    assert config.model == ModelConfig(**NON_DEFAULTS)


def test_every_model_option_is_reachable_from_yaml_and_round_trips(tmp_path):
    config = make_config(overrides={"model": NON_DEFAULTS, "lr": 3e-4})
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(config))
    assert "model:" in path.read_text() and "  window: 4  # frames per temporal-decoder window" in path.read_text()
    again = make_config(read_config_file(path))
    assert again == config
    # the flat layout of configs written before ModelConfig still reads
    flat = tmp_path / "flat.yaml"
    flat.write_text("rel_head: linear\ndec_layer: 2\nrel_mem_compute: null\nlr: 0.001\n")
    old = make_config(read_config_file(flat))
    assert (old.model.rel_head, old.model.dec_layer, old.model.rel_mem_compute, old.lr) == ("linear", 2, "none", 1e-3)


@pytest.mark.parametrize("values, message", [
    ({"rel_head": "mlp"}, "'rel_head' must be one of"),
    ({"name": "sttran9"}, "'name' must be one of \\['fremure', 'sttran'\\]"),
    ({"K": 0}, "'K' must be a positive integer"),
    ({"window": True}, "'window' must be a positive integer"),
    ({"window": 2 ** 62}, "'window' must be at most 4096"),
    ({"window": 2, "stride": 3}, "'stride' \\(3\\) must not exceed 'window' \\(2\\)"),
    ({"dropout": 1.0}, "'dropout' must lie in \\[0.0, 1.0\\)"),
    ({"mem_feat_lambda": float("nan")}, "'mem_feat_lambda' must lie in"),
    ({"tracking": True}, "\\['tracking'\\] need mode sgcls or sgdet"),
    ({"take_obj_mem_feat": True, "tracking": True}, "\\['tracking', 'take_obj_mem_feat'\\] need mode sgcls"),
    ({"freq": "yes"}, "'freq' must be true or false"),
])
def test_validation_names_the_option(values, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**values)


def test_building_a_model_leaves_the_process_kernel_choice_alone():
    before = fremure_ext.dispatch.current()
    model = build_model(ModelConfig(kernels="reference", dec_layer=1, keep_unused=False), 37)
    assert fremure_ext.dispatch.current() == before
    assert model.config.kernels == "reference"


# ------------------------------------------------------------------ what actually ran
COUNTING_RUN = textwrap.dedent("""
    import json, sys
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class FremureOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            if name.startswith("fremure."):
                self.calls[name] = self.calls.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    from fremure.cli import main
    with FremureOps() as mode:
        code = main(sys.argv[2:])
    with open(sys.argv[1], "w") as handle:
        json.dump({"code": code, "calls": mode.calls}, handle)
""")


def _ops_run(tmp_path, env_kernels: str | None, *flags: str) -> dict:
    """`fremure train` (1 epoch, 1 video) in a subprocess under FREMURE_KERNELS=env_kernels; returns
    the fremure ops that dispatched to a compiled kernel (the reference path calls none)."""
    data, train, test = sample_caches()
    script, out = tmp_path / "count.py", tmp_path / f"calls-{env_kernels}-{len(flags)}.json"
    script.write_text(COUNTING_RUN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("FREMURE_KERNELS", None)
    if env_kernels:
        env["FREMURE_KERNELS"] = env_kernels
    argv = ["train", "--data-path", data, "--train-cache", train, "--test-cache", test, "--save-path",
            str(tmp_path / f"run-{env_kernels}-{len(flags)}"), "--dec-layer", "1", "--keep-unused", "false",
            "--max-train-videos", "1", "--max-test-videos", "1", "--nepoch", "1", "--progress", "false",
            "--tensorboard", "false", "--checkpoints", "none", *flags]
    result = subprocess.run([sys.executable, str(script), str(out), *argv], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["code"] == 0
    return record["calls"]


def test_fremure_kernels_environment_chooses_what_runs(tmp_path):
    """FREMURE_KERNELS=reference: no compiled fremure op runs in training (before ModelConfig the
    train command reset the choice to auto and ran them); an explicit --kernels wins over it."""
    assert _ops_run(tmp_path, None), "the default run should use the compiled kernels"
    assert _ops_run(tmp_path, "reference") == {}
    calls = _ops_run(tmp_path, "reference", "--kernels", "ops")
    assert calls.get("fremure.segment_attention", 0) > 0, calls


# ------------------------------------------------------------------ checkpoints
def _predictions(model, mode: str = "predcls") -> list:
    data, _, test = sample_caches()
    from fremure.data.cache import VideoEntrySource
    test_ds = load_split(data, "test", mode)
    torch.manual_seed(0)
    results, preds = evaluate(model, VideoEntrySource(test_ds, mode, False, cache=test), test_ds.gt_annotations,
                              mode, videos=1)
    return preds


def _same_predictions(a: list, b: list) -> None:
    assert [i for i, _ in a] == [i for i, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert set(x) == set(y)
        for key in x:
            assert torch.equal(x[key], y[key]), key


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One small run (non-default window, stride and window_mode; memory on) with its trainer."""
    folder = tmp_path_factory.mktemp("model-config-run")
    config = small_config(str(folder), max_train_videos=2, max_test_videos=1, window=3, stride=2,
                          window_mode="mean", rel_head="gmm", decouple="separate")
    trainer = make_trainer(config)
    trainer.fit()
    return folder, trainer


def test_checkpoint_records_the_model_config_and_rebuilds_from_it_alone(trained_run):
    folder, trainer = trained_run
    state, tensors, _ = load_checkpoint(str(folder / "checkpoints" / "last.json"))
    assert state["config"]["model"] == trainer.model.config.to_dict()
    assert state["object_classes"] == trainer.model.object_classes
    assert {k for k in tensors if k.startswith("priors.")} == {"priors.attention", "priors.spatial", "priors.contact"}
    loaded = load_run(folder)                       # no data folder: everything comes from the checkpoint
    assert loaded.config == dataclasses.replace(trainer.model.config, kernels="auto")
    assert (loaded.config.window, loaded.config.stride, loaded.config.window_mode) == (3, 2, "mean")
    _same_predictions(_predictions(loaded.model), _predictions(trainer.model))


def test_a_checkpoint_written_before_model_config_still_loads(trained_run, tmp_path):
    """The flat config layout, no priors and no class names (what fremure train wrote before):
    its options are mapped and the priors recomputed from the AG folder."""
    folder, trainer = trained_run
    state, tensors, _ = load_checkpoint(str(folder / "checkpoints" / "last.json"))
    flat = {k: v for k, v in state["config"].items() if k != "model"}
    old_names = ("mode", "rel_head", "obj_head", "K", "enc_layer", "dec_layer", "keep_unused", "dropout", "decouple",
                 "tracking", "kernels", "freq", "freq_include_test", "rel_mem_compute", "mem_fusion", "mem_feat_lambda")
    flat.update({k: state["config"]["model"][k] for k in old_names})
    legacy = {k: v for k, v in state.items() if k not in ("config", "object_classes")}
    legacy["config"] = flat
    weights = {k: v for k, v in tensors.items() if not k.startswith("priors.")}
    path = save_checkpoint(str(tmp_path), "old", weights, legacy)
    with pytest.raises(CheckpointError, match="does not record its frequency priors"):
        load_run(path)
    data, _, _ = sample_caches()
    # the options the old layout had are mapped; those it could not record (this run's window) are given
    loaded = load_run(path, data_path=data, overrides={"window": 3, "stride": 2, "window_mode": "mean"})
    assert (loaded.config.rel_head, loaded.config.decouple, loaded.config.dec_layer) == ("gmm", "separate", 1)
    _same_predictions(_predictions(loaded.model), _predictions(trainer.model))
    model = load_run(folder).model
    assert all(torch.equal(loaded.model.frequencies[k], model.frequencies[k]) for k in model.frequencies)


def test_a_checkpoint_of_another_architecture_names_the_difference(trained_run):
    folder, _ = trained_run
    with pytest.raises(CheckpointError, match="options differ from the checkpoint's: decouple: checkpoint "
                                              "'separate', asked 'shared'"):
        load_run(folder, overrides={"decouple": "shared"})


# ------------------------------------------------------------------ every combination
COMBINATIONS = [dict(decouple=d, freq=f, rel_mem_compute=m, rel_head=h)
                for d, f, m, h in itertools.product(("shared", "separate"), (True, False), ("none", "joint"),
                                                    ("linear", "bayesian", "gmm", "gmm_plus"))]
COMBINATIONS += [dict(rel_mem_compute="seperate", mem_fusion="early"),
                 dict(window=3, stride=1, window_mode="both"), dict(window=4, stride=2, window_mode="weighted"),
                 dict(gate="log_inverse", selection="automated")]


@pytest.mark.slow
@pytest.mark.parametrize("options", COMBINATIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_every_combination_trains_evaluates_saves_and_reloads(options, tmp_path):
    """One epoch on two videos, memory rebuilt, evaluated, saved; reloaded from the checkpoint alone
    it predicts exactly the same."""
    config = small_config(str(tmp_path), max_train_videos=2, max_test_videos=1, **options)
    trainer = make_trainer(config)
    history = trainer.fit()
    assert len(history) == 1 and history[0]["R@20"] == history[0]["R@20"]      # evaluated, not NaN
    if config.model.rel_mem_compute != "none":
        assert trainer.model.rel_memory, "the memory was not rebuilt"
    loaded = load_run(tmp_path, use_memory=True)
    assert loaded.config == dataclasses.replace(config.model, kernels="auto")
    _same_predictions(_predictions(loaded.model), _predictions(trainer.model))
