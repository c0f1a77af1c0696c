"""The model's output contract (docs/architecture.md, "The model's outputs") in every option
combination that changes it: decouple x frequency priors x relation memory x memory fusion, each
through a memory rebuild and one training step."""

from __future__ import annotations

import warnings

import pytest
import torch

from fremure.data.synthetic_entry import predcls_entry
from fremure.model import FReMuRe
from fremure.relations import NAMES
from fremure.train import MemoryAccumulator, relation_losses

FREQ = {"attention": torch.tensor([0.5, 0.3, 0.2]), "spatial": torch.linspace(0.05, 0.3, 6),
        "contact": torch.linspace(0.01, 0.1, 17)}
MEMORY = [(None, "late"), ("joint", "late"), ("joint", "early"), ("seperate", "late"), ("seperate", "early")]


def labelled_entry() -> dict:
    """A three-frame PredCls entry with ground-truth label lists for the losses and the rebuild."""
    entry = predcls_entry([2, 1, 2], seed=4)
    pairs = entry["pair_idx"].shape[0]
    entry.update(attention_gt=[[i % 3] for i in range(pairs)], spatial_gt=[[i % 6, 5] for i in range(pairs)],
                 contacting_gt=[[(2 * i) % 17] for i in range(pairs)])
    return entry


def missing_keys(entry: dict) -> list[str]:
    keys = {f"{name}_{part}" for name in NAMES for part in ("distribution", "features", "mem_features")}
    return sorted(keys - set(entry)) + ([None] if None in entry else [])


def rebuild_and_train(model: FReMuRe, freq: bool) -> list[str]:
    """Memory rebuild (as ``Trainer.rebuild_memory``) and one training forward and backward;
    returns the keys of the output contract that either pass lacked."""
    entry = labelled_entry()
    model.set_frequencies(FREQ if freq else None)
    model.rel_memory = None
    model.zero_grad()
    model.eval()
    with torch.no_grad():
        first = model(dict(entry), "train")
    accumulator = MemoryAccumulator(1936, {"attention": FREQ["attention"], "spatial": FREQ["spatial"],
                                           "contacting": FREQ["contact"]} if freq else None)
    accumulator.add_video(first)
    model.rel_memory = accumulator.prototypes()
    model.train()
    out = model(dict(entry), "train")
    loss = sum(relation_losses(out, "predcls", rel_head="linear").values())
    assert torch.isfinite(loss)
    if loss.requires_grad:
        loss.backward()
    return missing_keys(first) + missing_keys(out)


@pytest.mark.parametrize("decouple", ["shared", "separate"])
@pytest.mark.parametrize("memory,fusion", MEMORY)
def test_memory_rebuild_and_training_step(decouple, memory, fusion):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        model = FReMuRe(rel_head="linear", dec_layer_num=1, keep_unused=False, dropout=0.0, decouple=decouple,
                        rel_mem_compute=memory, mem_fusion=fusion)
    for name, parameter in model.named_parameters():
        # gradients only where the memory is read: a full backward at D = 1936 would take seconds
        parameter.requires_grad_(".mem_attention." in name)
    for freq in (True, False):
        assert rebuild_and_train(model, freq) == [], f"freq={freq}"
        memory_grads = [p.grad for n, p in model.named_parameters() if ".mem_attention." in n]
        if memory is None:
            assert not memory_grads
        else:
            # the rebuilt memory took part in the training forward
            assert memory_grads and all(g is not None and bool(g.abs().sum() > 0) for g in memory_grads), freq
