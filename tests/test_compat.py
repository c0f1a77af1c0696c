"""fremure.compat: published state dicts and checkpoints in and out."""

from __future__ import annotations

import pytest
import torch

from fremure.compat import export_reference_state_dict, load_reference_state_dict
from fremure.model import GlocalTransformer, GMMHeadPlus

from conftest import load_fixture
from test_model_transformer import build


def test_transformer_round_trip_is_exact():
    fx = load_fixture("transformer_freq_contact_memory.pt")
    model = load_reference_state_dict(build(fx["config"], "reference"), fx["state_dict"])
    exported = export_reference_state_dict(model)
    assert list(exported) == list(fx["state_dict"])
    for key, value in fx["state_dict"].items():
        assert torch.equal(exported[key], value), key


def test_transformer_loads_from_whole_model_and_data_parallel_keys():
    fx = load_fixture("transformer_plain.pt")
    whole = {f"module.glocal_transformer.{k}": v for k, v in fx["state_dict"].items()}
    whole["module.a_rel_compress.weight"] = torch.zeros(3, 48)
    model = load_reference_state_dict(build(fx["config"], "reference"), whole)
    assert torch.equal(model.position_embedding.weight, fx["state_dict"]["position_embedding.weight"])


def test_other_architecture_is_a_clear_error():
    fx = load_fixture("transformer_plain.pt")
    with pytest.raises(ValueError, match=r"does not fit GMMHeadPlus.*missing keys \(13\): heads\.mu_1\.bias"
                                         r".*unexpected keys \(99\): freq_mapper"):
        load_reference_state_dict(GMMHeadPlus(48, 3, k=2), fx["state_dict"])
    small = GlocalTransformer(embed_dim=32, nhead=4, dim_feedforward=96, enc_layer_num=1, dec_layer_num=2)
    with pytest.raises(ValueError, match=r"shape mismatches \(given vs expected\) \(83\): "
                                         r"fusion_gate_global\.0\.bias: \(48,\) vs \(32,\)"):
        load_reference_state_dict(small, fx["state_dict"])
    deeper = build(fx["config"], "reference", dec_layer_num=3)
    with pytest.raises(ValueError, match=r"missing keys .*global_attention\.layers\.2\."):
        load_reference_state_dict(deeper, fx["state_dict"])
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        load_reference_state_dict(deeper, [1, 2])


def test_export_refuses_beyond_reference_parameters():
    model = GlocalTransformer(embed_dim=16, nhead=2, dim_feedforward=32, mode="weighted")
    with pytest.raises(ValueError, match="window_weight"):
        export_reference_state_dict(model)


def test_shared_checkpoint_initialises_every_separate_branch():
    fx = load_fixture("transformer_plain.pt")

    class Separate(torch.nn.Module):  # the layout of FReMuRe(decouple="separate"), transformers only
        decouple = "separate"

        def __init__(self):
            super().__init__()
            self.glocal_transformer = torch.nn.ModuleDict({r: build(fx["config"], "reference")
                                                           for r in ("attention", "spatial", "contact")})

    model = Separate()
    load_reference_state_dict(model, {f"glocal_transformer.{k}": v for k, v in fx["state_dict"].items()})
    for branch in model.glocal_transformer.values():
        assert torch.equal(branch.position_embedding.weight, fx["state_dict"]["position_embedding.weight"])
    with pytest.raises(ValueError, match="decouple='separate'"):
        export_reference_state_dict(model)
