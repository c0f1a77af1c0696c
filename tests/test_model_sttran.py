"""STTran as a configuration of the package: the published code's numbers (tests/fixtures/sttran/,
full size D = 1936, PredCls) on both kernel paths, the published key mapping both ways, its
ModelConfig (defaults, refused options, recipe), and one epoch trained, saved and reloaded."""

from __future__ import annotations

import pathlib

import pytest
import torch

from conftest import FWD_TOL, GRAD_TOL
from sttran_weights import check_parameters, draw_state_dict
from fremure.cli import build_parser
from fremure.cli_args import make_train_config
from fremure.compat.sttran import (export_sttran_state_dict, fremure_to_sttran_keys, load_sttran_state_dict,
                                   sttran_to_fremure_keys)
from fremure.model.config import ModelConfig, build_model
from fremure.model.glocal import GlocalTransformer
from fremure.model.published import to_published
from fremure.model.sttran import STTran

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "sttran"
CASES = ("f2_s11", "f3_s12", "f4_s13", "f3_s14", "f4_s15")
OUTPUTS = ("attention_distribution", "spatial_distribution", "contacting_distribution")


def load_case(name: str) -> dict:
    path = FIXTURES / f"predcls_{name}.pt"
    if not path.is_file():
        pytest.fail(f"STTran fixture {path} is missing (tests/fixtures/sttran/README.md)", pytrace=False)
    return torch.load(path, weights_only=True)


def published_state_dict(fx: dict, model: STTran) -> dict[str, torch.Tensor]:
    """The published parameters of the fixture, drawn from its seed and checked against its checksums."""
    ours = export_sttran_state_dict(model)
    assert sorted(ours) == fx["config"]["param_keys"], "our STTran does not have the published keys"
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in ours.items()}
    state = draw_state_dict(shapes, fx["config"]["param_seed"])
    check_parameters(state, fx["param_checksums"])
    return state


def sttran_for(fx: dict, kernels: str) -> STTran:
    """Our STTran with the fixture's parameters: the packed computation ("ops") or the published
    one on the references ("reference")."""
    model = build_model(ModelConfig.from_dict({"name": "sttran", "kernels": kernels}), fx["config"]["obj_classes"])
    load_sttran_state_dict(model, published_state_dict(fx, model))
    if kernels == "reference":
        to_published(model)
    return model.eval()


def entry_of(inputs: dict) -> dict:
    keys = ("features", "labels", "pair_idx", "im_idx", "union_feat", "spatial_masks")
    return {k: inputs[k].float() if inputs[k].is_floating_point() else inputs[k].clone() for k in keys}


def compare_gradient(name: str, grad: torch.Tensor, recorded) -> None:
    if isinstance(recorded, torch.Tensor):
        torch.testing.assert_close(grad, recorded, **GRAD_TOL, msg=lambda m: f"{name}: {m}")
        return
    g2 = grad.reshape(grad.shape[0], -1).double()
    torch.testing.assert_close(g2 @ recorded["u"].double(), recorded["rows"], **GRAD_TOL,
                               msg=lambda m: f"{name} (G u): {m}")
    torch.testing.assert_close(recorded["v"].double() @ g2, recorded["cols"], **GRAD_TOL,
                               msg=lambda m: f"{name} (v G): {m}")
    torch.testing.assert_close(grad.reshape(-1)[recorded["index"]], recorded["values"], **GRAD_TOL,
                               msg=lambda m: f"{name} (sampled): {m}")


@pytest.mark.parametrize("kernels", ["reference", "ops"])
@pytest.mark.parametrize("case", CASES)
def test_reproduces_published_sttran(case, kernels):
    """Outputs and parameter gradients of the published STTran (PredCls, D = 1936, eval, dropout 0)."""
    fx = load_case(case)
    model = sttran_for(fx, kernels)
    captured = {}
    model.glocal_transformer.register_forward_hook(lambda m, args, out: captured.update(output=out.output))
    calls = {}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = model(entry_of(fx["inputs"]), phase="train")    # "train": attention logits, as published
        loss = sum((out[k] * fx["inputs"][f"loss_weight_{k}"]).sum() for k in OUTPUTS)
        loss.backward()
    for event in prof.events():
        if event.name.startswith("fremure::"):
            calls[event.name] = calls.get(event.name, 0) + 1
    for key in OUTPUTS:
        torch.testing.assert_close(out[key], fx["outputs"][key], **FWD_TOL, msg=lambda m: f"{key}: {m}")
    torch.testing.assert_close(captured["output"], fx["outputs"]["transformer_output"], **FWD_TOL)
    grads = {k: p.grad for k, p in fremure_to_sttran_keys(dict(model.named_parameters())).items()
             if p.grad is not None}
    recorded = {k[len("param."):]: v for k, v in fx["grads"].items()}
    assert sorted(grads) == sorted(recorded)
    for name, grad in grads.items():
        compare_gradient(name, grad, recorded[name])
    if kernels == "ops":      # the packed path runs the spatial encoder and temporal decoder on our ops
        assert {"fremure::segment_attention", "fremure::window_pack", "fremure::window_unpack"} <= set(calls), calls


def test_test_phase_gives_the_softmax_the_published_evaluator_applies():
    fx = load_case(CASES[1])
    model = sttran_for(fx, "ops")
    with torch.no_grad():
        out = model(entry_of(fx["inputs"]), phase="test")
    torch.testing.assert_close(out["attention_distribution"], fx["outputs"]["attention_distribution"].softmax(-1),
                               **FWD_TOL)
    for key in OUTPUTS[1:]:
        torch.testing.assert_close(out[key], fx["outputs"][key], **FWD_TOL)


def test_published_keys_round_trip():
    """published -> ours -> published: the same keys and the very same tensors."""
    fx = load_case(CASES[0])
    model = STTran(obj_classes=fx["config"]["obj_classes"])
    published = published_state_dict(fx, model)
    ours = sttran_to_fremure_keys(published)
    assert sorted(ours) == sorted(model.state_dict())
    assert "object_classifier.intermediate.1.running_var" in ours and "object_classifier.decoder_lin.3.weight" \
        not in ours
    back = fremure_to_sttran_keys(ours)
    assert list(back) == list(published)
    assert all(back[k] is published[k] for k in published)
    load_sttran_state_dict(model, {f"module.{k}": v for k, v in published.items()})   # DataParallel prefix
    exported = export_sttran_state_dict(model)
    assert sorted(exported) == sorted(published)
    assert all(torch.equal(exported[k], published[k]) for k in published)


def test_a_state_dict_that_does_not_fit_names_the_keys():
    model = STTran(obj_classes=37)
    published = export_sttran_state_dict(model)
    del published["a_rel_compress.bias"]
    published["glocal_transformer.freq_mapper.attention.weight"] = torch.zeros(64, 3)
    with pytest.raises(ValueError, match=r"missing keys \(1\): a_rel_compress.bias.*unexpected keys \(1\): "
                                         r"glocal_transformer.freq_mapper.attention.weight"):
        load_sttran_state_dict(model, published)
    with pytest.raises(TypeError, match="model must be a fremure STTran"):
        load_sttran_state_dict(torch.nn.Linear(2, 2), published)


# ------------------------------------------------------------------ the configuration
def test_sttran_has_only_sttrans_modules():
    model = build_model(ModelConfig.from_dict({"name": "sttran"}), 37)
    assert isinstance(model, STTran) and model.config.name == "sttran"
    names = {k.split(".")[1] for k in model.state_dict() if k.startswith("glocal_transformer.")}
    assert names == {"local_attention", "global_attention", "position_embedding"}
    assert len(model.glocal_transformer.local_attention.layers) == 1
    assert len(model.glocal_transformer.global_attention.layers) == 3
    assert model.glocal_transformer.position_embedding.weight.shape == (2, 1936)
    with pytest.raises(ValueError, match="no frequency branch"):
        model.set_frequencies({"attention": torch.ones(3), "spatial": torch.ones(6), "contact": torch.ones(17)})


def test_transformer_without_frequency_branch_refuses_priors():
    transformer = GlocalTransformer(embed_dim=16, nhead=2, dim_feedforward=8, frequency_branch=False)
    with pytest.raises(ValueError, match="freq must be None"):
        transformer(torch.randn(3, 16), torch.tensor([0.0, 0.0, 1.0]), rel_type="attention", freq=torch.ones(3))


def test_defaults_are_the_published_recipe():
    config = ModelConfig.from_dict({"name": "sttran"})
    assert (config.rel_head, config.obj_head, config.rel_mem_compute, config.freq) == ("linear", "linear", "none",
                                                                                        False)
    assert (config.enc_layer, config.dec_layer, config.window, config.stride, config.window_mode) == (1, 3, 2, 1,
                                                                                                       "latter")
    train = make_train_config(build_parser().parse_args(["train", "--model", "sttran"]))
    assert train.model == config
    assert (train.lr, train.nepoch, train.optimizer, train.spatial_loss, train.clip) == (1e-5, 10, "adamw", "mlm", 5.0)
    given = make_train_config(build_parser().parse_args(["train", "--model", "sttran", "--spatial-loss", "bce",
                                                         "--dec-layer", "2"]))
    assert (given.spatial_loss, given.model.dec_layer) == ("bce", 2)
    assert make_train_config(build_parser().parse_args(["train"])).spatial_loss == "bce"    # FReMuRe's recipe
    # STTran's train.py steps ReduceLROnPlateau on R@20 (with constraint), FReMuRe's on mR@20
    assert train.scheduler_metric == "R@20"
    assert make_train_config(build_parser().parse_args(["train"])).scheduler_metric == "mR@20"


@pytest.mark.parametrize("option, value", [("rel_head", "bayesian"), ("rel_mem_compute", "joint"), ("freq", True),
                                           ("decouple", "separate"), ("obj_head", "gmm"), ("keep_unused", True),
                                           ("K", 4), ("gate", "log_inverse"), ("selection", "automated"),
                                           ("mem_feat_lambda", 0.3)])
def test_options_sttran_does_not_have_are_refused_by_name(option, value):
    with pytest.raises(ValueError, match=f"model 'sttran' does not take the model options {option}="):
        ModelConfig.from_dict({"name": "sttran", option: value})


def test_sgcls_and_sgdet_build():
    for mode in ("sgcls", "sgdet"):
        model = build_model(ModelConfig.from_dict({"name": "sttran", "mode": mode}), 37)
        assert model.object_classifier.mode == mode and not model.object_classifier.tracking


# ------------------------------------------------------------------ train, evaluate, save, load
def test_one_epoch_trains_evaluates_saves_and_reloads(tmp_path):
    from test_model_config import _predictions, _same_predictions
    from train_support import small_config
    from fremure.runs import load_run
    from fremure.train import load_checkpoint
    from fremure.train.run import make_trainer

    config = small_config(str(tmp_path), max_train_videos=2, max_test_videos=1, model={"name": "sttran"})
    assert (config.model.name, config.spatial_loss) == ("sttran", "mlm")
    trainer = make_trainer(config)
    history = trainer.fit()
    assert len(history) == 1 and history[0]["R@20"] == history[0]["R@20"]
    state, tensors, _ = load_checkpoint(str(tmp_path / "checkpoints" / "last.json"))
    assert state["config"]["model"]["name"] == "sttran"
    assert not any(k.startswith(("priors.", "memory.")) for k in tensors)
    loaded = load_run(tmp_path)
    assert isinstance(loaded.model, STTran) and loaded.config.name == "sttran"
    _same_predictions(_predictions(loaded.model), _predictions(trainer.model))


def test_demo_runs_sttran_with_its_recipe(capsys):
    """``fremure demo --model sttran`` trains STTran with the demo's sizes over STTran's recipe (the
    whole demo takes minutes and is not run here; this checks the configuration it trains)."""
    from fremure.cli import main
    assert main(["demo", "--model", "sttran", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "  name: sttran" in printed and "spatial_loss: mlm" in printed and "  rel_head: linear" in printed
