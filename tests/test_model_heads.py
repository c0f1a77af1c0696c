"""Relation heads: published fixtures (outputs and every gradient) with the ops' compiled kernels
and with their references (fremure_ext.dispatch.use_kernels)."""

from __future__ import annotations

import pytest
import torch

import fremure_ext
from fremure.compat import load_reference_state_dict
from fremure.model import BayesianHead, GMMHead, GMMHeadPlus, LinearHead, make_rel_head

from conftest import FWD_TOL, GRAD_TOL, load_fixture

RELS = {"attention": "attention", "spatial": "spatial", "contacting": "contact"}


def kernels_for(op: str):
    skip = pytest.mark.skipif(not hasattr(fremure_ext, op), reason=f"fremure_ext.{op} not merged yet")
    return ["reference", pytest.param("ops", marks=skip)]


def build(name: str, config: dict, rel_type: str):
    if name.startswith("gmm_plus"):
        return GMMHeadPlus(config["hid_dim"], config["num_classes"], k=config["k"], activation=config["activation"],
                           var_floor=config["var_floor"], var_ceiling=config["var_ceiling"])
    if name.startswith("gmm_tempura"):
        return GMMHead(config["hid_dim"], config["num_classes"], rel_type=rel_type, k=config["k"])
    return BayesianHead(config["hid_dim"], config["num_classes"], rel_type=rel_type, sample_n=config["sample_n"])


def check_fixture(name: str, rel: str, kernels: str):
    with fremure_ext.dispatch.use_kernels(kernels):
        check_fixture_now(name, rel)


def check_fixture_now(name: str, rel: str):
    fx = load_fixture(name)
    head = load_reference_state_dict(build(name, fx["config"], RELS[rel]), fx["state_dict"])
    inputs, expected = fx["inputs"], fx["outputs"]
    x = inputs["x"].clone().requires_grad_()
    torch.testing.assert_close(head(x, "test"), expected["pred_eval"], **FWD_TOL)
    pred = head(x, "train", noise=inputs["noise"])
    torch.testing.assert_close(pred, expected["pred_train"], **FWD_TOL)
    if "unc_aleatoric" in expected:
        aleatoric, epistemic = head(x, "test", unc=True)
        torch.testing.assert_close(aleatoric, expected["unc_aleatoric"], **FWD_TOL)
        torch.testing.assert_close(epistemic, expected["unc_epistemic"], **FWD_TOL)
    if fx["grads"]:
        (pred * inputs["loss_weight"]).sum().backward()
        params = dict(head.named_parameters())
        got = {"x": x.grad, **{f"param.{k}": p.grad for k, p in params.items() if p.grad is not None}}
        assert set(got) == set(fx["grads"])
        for key, ref in fx["grads"].items():
            torch.testing.assert_close(got[key], ref, **GRAD_TOL, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("kernels", kernels_for("gmm_mixture"))
@pytest.mark.parametrize("k", [1, 4, 6])
@pytest.mark.parametrize("rel", list(RELS))
def test_gmm_plus_fixture(rel, k, kernels):
    check_fixture(f"gmm_plus_{rel}_k{k}.pt", rel, kernels)


@pytest.mark.parametrize("kernels", kernels_for("bayes_mc"))
@pytest.mark.parametrize("rel", list(RELS))
def test_bayesian_fixture(rel, kernels):
    check_fixture(f"bayesian_{rel}_s6.pt", rel, kernels)


@pytest.mark.parametrize("rel", list(RELS))
def test_tempura_gmm_fixture(rel):
    check_fixture(f"gmm_tempura_{rel}_k4.pt", rel, "reference")


def test_tempura_object_head_drops_background_at_test():
    torch.manual_seed(0)
    head = GMMHead(16, 37, rel_type=None, k=3)
    x = torch.randn(5, 16)
    pred = head(x, "test")
    assert pred.shape == (5, 36)
    torch.testing.assert_close(pred.sum(-1), torch.ones(5))
    assert head(x, "train").shape == (5, 37)


@pytest.mark.parametrize("op,cls", [("gmm_mixture", GMMHeadPlus), ("bayes_mc", BayesianHead)])
def test_generator_makes_training_draws_reproducible(op, cls):
    torch.manual_seed(0)
    head = cls(16, 6, rel_type="spatial")
    x = torch.randn(7, 16)
    a = head(x, "train", generator=torch.Generator().manual_seed(5))
    b = head(x, "train", generator=torch.Generator().manual_seed(5))
    c = head(x, "train", generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_linear_head_published_activations():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    att = LinearHead(8, 3, "attention")
    spa = LinearHead(8, 6, "spatial")
    logits = torch.nn.functional.linear(x, att.weight, att.bias)
    torch.testing.assert_close(att(x, "train"), logits)
    torch.testing.assert_close(att(x, "test"), logits.softmax(-1))
    torch.testing.assert_close(spa(x, "test"), torch.sigmoid(torch.nn.functional.linear(x, spa.weight, spa.bias)))
    with pytest.raises(ValueError, match="no uncertainty"):
        att(x, unc=True)


def test_head_input_errors():
    head = GMMHeadPlus(8, 3, k=2)
    with pytest.raises(ValueError, match=r"x must be \[B, 8\]"):
        head(torch.randn(4, 9))
    with pytest.raises(ValueError, match=r"noise must have shape \[2, 4, 3\]"):
        head(torch.randn(4, 8), noise=torch.randn(3, 4, 3))
    with pytest.raises(ValueError, match="rel_head must be"):
        make_rel_head("mlp", 8, 3, "attention")
