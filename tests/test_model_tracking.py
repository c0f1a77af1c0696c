"""Object tracking (published tracking=True): the batched encoder against a per-class loop written
from the published semantics, published key names, checkpoint round trip, tracking off unchanged."""

from __future__ import annotations

import warnings

import pytest
import torch

from fremure.compat import export_reference_state_dict, infer_config, load_reference_checkpoint
from fremure.model import FReMuRe, ObjectClassifier
from fremure.model.pairs import center_size
from fremure.model.published import to_published
from fremure.data.synthetic_entry import predcls_entry
from fremure.model.tracking import track_layout

from conftest import FWD_TOL, GRAD_TOL

D = 2048 + 200 + 128
KERNELS = ["reference", "ops"]


def sgcls_entry(counts, seed):
    """A training entry with a detector distribution [N, 36] peaked on a few classes, so that
    some classes have several boxes (over several frames) and some have one."""
    entry = predcls_entry(counts, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    n = entry["features"].shape[0]
    logits = torch.randn(n, 36, generator=gen)
    logits[torch.arange(n), torch.randint(0, 4, (n,), generator=gen)] += 8.0
    logits[0, 20] += 20.0   # a class seen once
    entry["distribution"] = torch.softmax(logits, 1)
    return entry


def classifier(kernels, mode="sgcls", **kwargs):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        model = ObjectClassifier(mode=mode, obj_head="linear", tracking=True, **kwargs).eval()
    return to_published(model) if kernels == "reference" else model


def track_input(model, entry):
    """The 2376-d classifier input the tracking encoder reads."""
    return torch.cat((entry["features"], entry["distribution"] @ model.obj_embed.weight,
                      model.pos_embed(center_size(entry["boxes"][:, 1:]))), 1)


def published_loop(model, entry, x):
    """One class at a time, as the published classify + get_sequence: rows of a class in row order,
    position = rank of the row's frame among the class's frames (frames ascending); a class with
    one row is a length-1 sequence at position 0; no padding anywhere."""
    labels = entry["distribution"].argmax(1)
    frame = entry["boxes"][:, 0].long()
    pe = model.positional_encoder.pe[0]
    out = torch.zeros_like(x)
    for label in labels.unique():
        rows = torch.nonzero(labels == label).flatten()
        _, counts = torch.unique(frame[rows], sorted=True, return_counts=True)
        position = torch.repeat_interleave(torch.arange(counts.shape[0]), counts)
        encoded = model.encoder_tran((x[rows] + pe[position]).unsqueeze(0))[0]
        out = out.index_put((rows,), encoded)
    return out


@pytest.mark.parametrize("kernels", KERNELS)
def test_batched_tracks_equal_per_class_loop_forward_backward(kernels, seed=0):
    # float64: the two computations differ only by rounding, so they must agree tightly
    model = classifier(kernels).double()
    entry = sgcls_entry([3, 4, 0, 2, 3], seed)
    labels = entry["distribution"].argmax(1)
    sizes = torch.bincount(labels)
    assert (sizes == 1).any() and sizes.max() >= 4   # one-box and multi-frame tracks present
    entry = dict(entry, features=entry["features"].double(), distribution=entry["distribution"].double(),
                 boxes=entry["boxes"].double())
    x = track_input(model, entry).detach()
    x_ours, x_loop = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = model.track(entry, x_ours)
    loop = published_loop(model, entry, x_loop)
    torch.testing.assert_close(ours, loop, rtol=1e-9, atol=1e-9)
    weight = torch.randn(ours.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    first, last = model.encoder_tran.layers[0], model.encoder_tran.layers[-1]
    # small parameters only (a full float64 gradient set would take seconds and a GB here)
    params = [first.self_attn.in_proj_bias, first.norm1.weight, last.linear1.bias, last.norm2.weight]
    got = torch.autograd.grad((ours * weight).sum(), [x_ours] + params)
    want = torch.autograd.grad((loop * weight).sum(), [x_loop] + params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)


def test_track_layout_positions_are_frame_ranks_within_the_class():
    labels = torch.tensor([3, 1, 3, 3, 1, 3, 2])
    frame = torch.tensor([0, 0, 0, 2, 2, 5, 5])
    layout = track_layout(labels, frame)
    assert layout.order.tolist() == [1, 4, 6, 0, 2, 3, 5]
    assert layout.offsets.tolist() == [0, 2, 3, 7]
    assert layout.position.tolist() == [0, 1, 0, 0, 0, 1, 2]
    assert layout.slot.tolist() == [0, 1, 0, 0, 1, 2, 3]
    assert layout.longest == 4


def test_classifier_outputs_with_tracking():
    model = classifier("auto")
    entry = sgcls_entry([2, 3, 2], 0)
    x = track_input(model, entry)
    out = model(dict(entry), phase="train")
    tracked = published_loop(model, entry, x)
    torch.testing.assert_close(out["object_features"], tracked, **FWD_TOL)
    torch.testing.assert_close(out["object_mem_features"], tracked, **FWD_TOL)
    torch.testing.assert_close(out["distribution"], model.decoder_lin(model.intermediate(tracked)), **FWD_TOL)
    assert torch.equal(out["pred_labels"], entry["labels"])


def test_tracking_off_is_the_plain_classifier():
    torch.manual_seed(0)
    model = ObjectClassifier(mode="sgcls", obj_head="linear").eval()
    assert not hasattr(model, "encoder_tran") and not hasattr(model, "positional_encoder")
    entry = sgcls_entry([2, 3, 2], 0)
    out = model(dict(entry), phase="train")
    expected = model.intermediate(track_input(model, entry))
    torch.testing.assert_close(out["object_features"], expected, rtol=0, atol=0)
    torch.testing.assert_close(out["distribution"], model.decoder_lin(expected), rtol=0, atol=0)


def test_sgdet_test_phase_carries_tracked_features_through_cleaning():
    model = classifier("auto", mode="sgdet")
    assert model.positional_encoder.pe.shape == (1, 600, D)
    entry = sgcls_entry([3, 2, 4], 2)
    entry.update(fmaps=torch.rand(3, 8, 10, 10), im_info=0.5, pred_labels=entry["distribution"].argmax(1) + 1)
    out = model(entry, phase="test")
    assert out["object_mem_features"].shape == (out["boxes"].shape[0], D)
    assert out["pair_idx"].shape[1] == 2 and out["union_feat"].shape[0] == out["pair_idx"].shape[0]


def test_position_table_overflow_is_an_error():
    model = classifier("reference")
    entry = sgcls_entry([1, 1, 1], 0)   # one class over 3 frames: positions 0, 1, 2
    entry["distribution"] = torch.zeros_like(entry["distribution"])
    entry["distribution"][:, 4] = 1.0
    model.positional_encoder.pe = model.positional_encoder.pe[:, :2]
    with pytest.raises(ValueError, match="spans 3 frames; the position table holds 2"):
        model(entry, phase="train")


# ------------------------------------------------------------------ relation model and compat

PUBLISHED_TRACKING_KEYS = (["object_classifier.positional_encoder.pe"]
                           + [f"object_classifier.encoder_tran.layers.{i}.{name}" for i in range(3)
                              for name in ("self_attn.in_proj_weight", "self_attn.in_proj_bias",
                                           "self_attn.out_proj.weight", "self_attn.out_proj.bias",
                                           "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
                                           "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")])


def tracking_model(**kwargs):
    torch.manual_seed(0)
    args = dict(mode="sgcls", tracking=True, take_obj_mem_feat=True, rel_head="linear", dec_layer_num=1,
                keep_unused=False)
    args.update(kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        return FReMuRe(**args).eval()


@pytest.fixture(scope="module")
def shared_model() -> FReMuRe:
    return tracking_model()


def test_published_key_names_order_and_shapes(shared_model):
    model = shared_model
    keys = list(model.state_dict())
    tracking_keys = [k for k in keys if ".encoder_tran." in k or ".positional_encoder." in k]
    assert tracking_keys == PUBLISHED_TRACKING_KEYS
    # published registration order: pos_embed, positional_encoder, encoder_tran, ..., intermediate
    assert keys.index("object_classifier.pos_embed.1.bias") < keys.index(PUBLISHED_TRACKING_KEYS[0])
    assert keys.index(PUBLISHED_TRACKING_KEYS[-1]) < keys.index("object_classifier.intermediate.0.weight")
    sd = model.state_dict()
    assert sd["object_classifier.encoder_tran.layers.0.linear1.weight"].shape == (1024, D)
    assert sd["subj_fc.weight"].shape == sd["obj_fc.weight"].shape == (512, D)
    assert sd["object_classifier.positional_encoder.pe"].shape == (1, 400, D)
    with_memory = classifier("auto", mem_compute=True, selection="automated")
    assert with_memory.mem_attention.in_proj_weight.shape == (3 * D, D)
    assert with_memory.selector.weight.shape == (1, D)


def test_checkpoint_round_trip(tmp_path, shared_model):
    model = shared_model
    entry = sgcls_entry([2, 3, 1, 2], 4)
    expected = model(dict(entry), phase="train")
    path = tmp_path / "best_tracking.tar"
    torch.save({"state_dict": export_reference_state_dict(model), "object_memory": [], "rel_memory": []}, path)
    config = infer_config(torch.load(path, weights_only=True)["state_dict"])
    assert config["tracking"] is True and config["take_obj_mem_feat"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # no frequency priors given (none were used)
        loaded = load_reference_checkpoint(path, mode="sgcls", keep_unused=False)
    got = loaded(dict(entry), phase="train")
    for key in ("object_mem_features", "attention_distribution", "spatial_distribution", "contacting_distribution"):
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="positional_encoder.pe"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_reference_checkpoint(path, mode="sgdet")


def test_relation_model_backward_reaches_the_tracking_encoder():
    model = tracking_model().train()
    out = model(sgcls_entry([2, 3, 2], 5), phase="train")
    loss = out["attention_distribution"].sum() + out["distribution"].logsumexp(1).sum()
    loss.backward()
    grads = [p.grad for p in model.object_classifier.encoder_tran.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
