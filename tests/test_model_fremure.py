"""FReMuRe relation model at D = 1936: ops == reference, published layout, checkpoints, object
classifier pairing (vs a per-frame loop written from docs/ag_and_eval.md), bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

import fremure_ext
from fremure.compat import export_reference_state_dict, infer_config, load_reference_checkpoint
from fremure.model.published import to_published
from fremure.model import FReMuRe, ObjectClassifier
from fremure.data.geometry import pair_box_masks
from fremure.data.synthetic_entry import predcls_entry

from conftest import FWD_TOL, GRAD_TOL

OPS = ("segment_attention", "window_pack", "window_unpack", "freq_gate_blend", "gated_fusion", "gmm_mixture")
MISSING_OPS = [name for name in OPS if not hasattr(fremure_ext, name)]
FREQ = {"attention": torch.tensor([0.55, 0.35, 0.10]), "spatial": torch.tensor([0.4, 0.2, 0.2, 0.1, 0.06, 0.04]),
        "contact": torch.linspace(0.002, 0.12, 17)}
DISTRIBUTIONS = ("attention_distribution", "spatial_distribution", "contacting_distribution")


def make_model(kernels: str, **kwargs) -> FReMuRe:
    """The model ("ops") or its published computation ("reference", see fremure.model.published)."""
    args = dict(rel_head="gmm_plus", dec_layer_num=1, keep_unused=False, freq_attention=FREQ["attention"],
                freq_spatial=FREQ["spatial"], freq_contact=FREQ["contact"])
    args.update(kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        model = FReMuRe(**args)
    return to_published(model) if kernels == "reference" else model


@pytest.fixture(scope="module")
def reference_model() -> FReMuRe:
    torch.manual_seed(0)
    model = make_model("reference").eval()
    gen = torch.Generator().manual_seed(1)
    model.rel_memory = {r: torch.randn(c, 1936, generator=gen) * 0.1
                        for r, c in (("attention", 3), ("spatial", 6), ("contacting", 17))}
    return model


def run(model: FReMuRe, entry: dict, phase: str = "test"):
    features = entry["features"].clone().requires_grad_()
    out = model(dict(entry, features=features), phase)
    weights = [torch.linspace(-1, 1, out[k].numel()).view_as(out[k]) for k in DISTRIBUTIONS]
    sum((out[k] * w).sum() for k, w in zip(DISTRIBUTIONS, weights)).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out, features.grad, grads


@pytest.mark.skipif(bool(MISSING_OPS), reason=f"fremure_ext lacks {MISSING_OPS} (not merged yet)")
def test_ops_equal_reference_forward_backward_d1936(reference_model):
    ops_model = make_model("ops").eval()
    ops_model.load_state_dict(reference_model.state_dict())
    ops_model.rel_memory = reference_model.rel_memory
    entry = predcls_entry([2, 3, 1, 2], seed=3)
    reference_model.zero_grad()
    with fremure_ext.dispatch.use_kernels("reference"):
        ref_out, ref_x, ref_grads = run(reference_model, entry)
    ops_out, ops_x, ops_grads = run(ops_model, entry)
    for key in DISTRIBUTIONS + ("attention_features", "spatial_mem_features", "contacting_features"):
        torch.testing.assert_close(ops_out[key], ref_out[key], **FWD_TOL, msg=lambda m: f"{key}: {m}")
    torch.testing.assert_close(ops_x, ref_x, **GRAD_TOL)
    for name in set(ref_grads) | set(ops_grads):
        # At test time the GMM variance rows get no gradient on the reference path, zero on the packed GEMM.
        ref = ref_grads.get(name, torch.zeros_like(ops_grads.get(name, torch.zeros(0))))
        got = ops_grads.get(name, torch.zeros_like(ref))
        torch.testing.assert_close(got, ref, **GRAD_TOL, msg=lambda m: f"{name}: {m}")


def test_training_pass_and_published_outputs(reference_model):
    model = reference_model.train()
    try:
        entry = predcls_entry([1, 2, 2], seed=5)
        out = model(dict(entry), "train", generator=torch.Generator().manual_seed(0))
    finally:
        model.eval()
    for key, width in zip(DISTRIBUTIONS, (3, 6, 17)):
        assert out[key].shape == (5, width) and bool(((out[key] >= 0) & (out[key] <= 1)).all())
    assert out["attention_features"].shape == (5, 1936)
    assert torch.equal(out["freq_contact"], FREQ["contact"])
    assert torch.equal(out["pred_labels"], entry["labels"])


def test_state_dict_uses_published_keys(reference_model):
    keys = set(reference_model.state_dict())
    for key in ("object_classifier.obj_embed.weight", "object_classifier.pos_embed.0.running_mean",
                "object_classifier.intermediate.0.weight", "object_classifier.decoder_lin.0.weight",
                "union_func1.weight", "conv.2.running_var", "conv.4.weight", "subj_fc.weight", "vr_fc.weight",
                "obj_embed.weight", "obj_embed2.weight", "glocal_transformer.mem_attention.in_proj_weight",
                "glocal_transformer.freq_mapper.contact.weight", "a_rel_compress.tau",
                "c_rel_compress.heads.var_6.bias"):
        assert key in keys, key
    assert not any("rel_memory" in k or k.startswith("freq_") for k in keys)


def test_checkpoint_round_trip(tmp_path, reference_model):
    state = export_reference_state_dict(reference_model)
    path = tmp_path / "best_Mrecall_model.tar"
    torch.save({"state_dict": state, "object_memory": [], "rel_memory": reference_model.rel_memory}, path)
    config = infer_config(state)
    inferred = (config["rel_head"], config["K"], config["obj_head"], config["dec_layer"])
    assert inferred == ("gmm_plus", 6, "linear", 1)
    loaded = to_published(load_reference_checkpoint(path, freq=FREQ))
    entry = predcls_entry([2, 1], seed=7)
    with torch.no_grad():
        a, b = reference_model(dict(entry), "test"), loaded(dict(entry), "test")
    for key in DISTRIBUTIONS:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


def test_checkpoint_from_another_architecture(tmp_path, reference_model):
    state = export_reference_state_dict(reference_model)
    sttran_like = {k: v for k, v in state.items() if "local_attention_tail" not in k and "freq_mapper" not in k}
    path = tmp_path / "other.tar"
    torch.save({"state_dict": sttran_like, "object_memory": [], "rel_memory": []}, path)
    with pytest.raises(ValueError, match=r"other\.tar: .*missing keys \(\d+\): glocal_transformer\.freq_mapper"):
        load_reference_checkpoint(path, freq=FREQ)
    path = tmp_path / "not_fremure.tar"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError, match="not a FReMuRe"):
        load_reference_checkpoint(path, freq=FREQ)
    with pytest.raises(FileNotFoundError):
        load_reference_checkpoint(tmp_path / "missing.tar")


def test_bad_entries(reference_model):
    entry = predcls_entry([2, 2], seed=1)
    bad = dict(entry, pair_idx=entry["pair_idx"].clone())
    bad["pair_idx"][0, 1] = 99
    with pytest.raises(ValueError, match=r"pair_idx'\] indexes rows \[0, 99\] but there are 6 boxes"):
        reference_model(bad, "test")
    with pytest.raises(ValueError, match=r"im_idx'\] must be \[4\]"):
        reference_model(dict(entry, im_idx=entry["im_idx"][:3]), "test")
    with pytest.raises(ValueError, match="im_idx must be sorted"):
        reference_model(dict(entry, im_idx=entry["im_idx"].flip(0)), "test")
    with pytest.raises(ValueError, match=r"frequency prior of 'spatial' must have shape \[6\]"):
        reference_model.set_frequencies(dict(FREQ, spatial=torch.rand(5)))


# ---------------------------------------------------------------------- object classifier


def peaked_distribution(n: int, gen: torch.Generator) -> torch.Tensor:
    """[n, 36] distributions concentrated on a few classes, so labels repeat inside frames."""
    logits = torch.full((n, 36), -4.0) + torch.rand(n, 36, generator=gen)
    favourites = torch.tensor([0, 4, 7, 16, 20])
    logits[:, favourites] += 4 * torch.rand(n, len(favourites), generator=gen)
    return torch.softmax(logits, dim=1)


def sgcls_loop(dist: torch.Tensor, frame: torch.Tensor):
    """docs/ag_and_eval.md 2.7 (sgcls test), one frame at a time."""
    dist = dist.clone()
    scores, labels = dist[:, 1:].max(dim=1)
    labels = labels + 2
    b = int(frame[-1]) + 1
    humans = []
    for i in range(b):
        rows = torch.nonzero(frame == i).flatten()
        h = int(rows[dist[rows, 0].argmax()])
        humans.append(h)
        labels[h], scores[h] = 1, dist[h, 0]
    for i in range(b):
        rows = torch.nonzero(frame == i).flatten()
        common = int(torch.mode(labels[rows])[0])
        same = rows[labels[rows] == common]
        for r in same[torch.argsort(dist[same, common - 1], stable=True)][:-1]:
            dist[r, common - 1] = 0
            labels[r], scores[r] = int(dist[r].argmax()) + 1, dist[r].max()
    pairs = [[humans[int(frame[m])], m] for m in range(frame.shape[0]) if labels[m] != 1]
    return dist, labels, scores, pairs


def greedy_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            a, c = boxes[i].tolist(), boxes[j].tolist()
            w = max(0.0, min(a[2], c[2]) - max(a[0], c[0]) + 1)
            h = max(0.0, min(a[3], c[3]) - max(a[1], c[1]) + 1)
            area = lambda z: (z[2] - z[0] + 1) * (z[3] - z[1] + 1)  # noqa: E731
            if w * h / (area(a) + area(c) - w * h) > threshold:   # the GPU kernel rule (docs/ag_and_eval.md 2.1)
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def sgdet_loop(dist, boxes, labels_in):
    """docs/ag_and_eval.md 2.7 (sgdet test): clean_class for 5, 8, 17, per-frame per-class NMS, persons."""
    for cls in (5, 8, 17):
        b = int(boxes[-1, 0]) + 1
        d, bx, lb = [], [], []
        for i in range(b):
            here = boxes[:, 0] == i
            dup = here & (labels_in == cls)
            new = dist[dup].clone()
            new[:, cls - 1] = 0
            d += [dist[here], new]
            bx += [boxes[here], boxes[dup]]
            lb += [labels_in[here], new.argmax(1) + 1]
        dist, boxes, labels_in = torch.cat(d), torch.cat(bx), torch.cat(lb)
    b = int(boxes[-1, 0]) + 1
    kept = []
    for i in range(b):
        rows = torch.nonzero(boxes[:, 0] == i).flatten()
        for j in range(36):
            cls_rows = rows[dist[rows].argmax(1) == j]
            if cls_rows.numel():
                kept += [int(cls_rows[k]) for k in greedy_nms(boxes[cls_rows, 1:], dist[cls_rows, j], 0.6)]
    dist, boxes = dist[kept], boxes[kept]
    scores, labels = dist[:, 1:].max(1)
    labels = labels + 2
    frame = boxes[:, 0].long()
    humans = {}
    for i in range(b):
        rows = torch.nonzero(frame == i).flatten()
        if rows.numel():
            humans[i] = int(rows[dist[rows, 0].argmax()])
            labels[humans[i]], scores[humans[i]] = 1, dist[humans[i], 0]
    pairs = [[humans[int(frame[m])], m] for m in range(frame.shape[0]) if labels[m] != 1 and int(frame[m]) in humans]
    return dist, boxes, labels, scores, pairs


def detection_entry(counts, seed):
    gen = torch.Generator().manual_seed(seed)
    frame = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    n = frame.shape[0]
    corner = torch.rand(n, 2, generator=gen) * 60
    boxes = torch.cat([frame[:, None].float(), corner, corner + 20 + torch.rand(n, 2, generator=gen) * 40], 1)
    return {"boxes": boxes, "distribution": peaked_distribution(n, gen), "features": torch.rand(n, 2048, generator=gen),
            "fmaps": torch.rand(len(counts), 8, 10, 10, generator=gen), "im_info": 0.5}


@pytest.mark.parametrize("seed", range(4))
def test_sgcls_labelling_and_pairs_match_frame_loop(seed):
    entry = detection_entry([4, 5, 3, 6], seed)
    dist, labels, scores, pairs = sgcls_loop(entry["distribution"], entry["boxes"][:, 0].long())
    out = ObjectClassifier(mode="sgcls", obj_head="linear").label_and_pair(entry)
    torch.testing.assert_close(out["distribution"], dist, rtol=0, atol=0)
    assert torch.equal(out["pred_labels"], labels)
    torch.testing.assert_close(out["pred_scores"], scores, rtol=0, atol=0)
    assert out["pair_idx"].tolist() == pairs
    assert out["im_idx"].tolist() == [float(out["boxes"][p[1], 0]) for p in pairs]
    p = out["pair_idx"]
    assert out["union_feat"].shape == (len(pairs), 8, 7, 7)
    expected_masks = pair_box_masks(torch.cat([entry["boxes"][p[:, 0], 1:], entry["boxes"][p[:, 1], 1:]], 1)) - 0.5
    torch.testing.assert_close(out["spatial_masks"], expected_masks)


@pytest.mark.parametrize("seed", range(4))
def test_sgdet_cleaning_nms_and_pairs_match_frame_loop(seed):
    entry = detection_entry([5, 0, 7, 4], seed)
    gen = torch.Generator().manual_seed(seed + 10)
    entry["pred_labels"] = torch.tensor([5, 8, 17, 3])[torch.randint(0, 4, (entry["boxes"].shape[0],), generator=gen)]
    dist, boxes, labels, scores, pairs = sgdet_loop(entry["distribution"], entry["boxes"], entry["pred_labels"])
    out = ObjectClassifier(mode="sgdet", obj_head="linear").label_and_pair(entry)
    torch.testing.assert_close(out["boxes"], boxes, rtol=0, atol=0)
    torch.testing.assert_close(out["distribution"], dist, rtol=0, atol=0)
    assert torch.equal(out["pred_labels"], labels)
    assert out["pair_idx"].tolist() == pairs
    assert out["human_idx"].shape == (4, 1)
