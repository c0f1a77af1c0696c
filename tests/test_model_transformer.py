"""GlocalTransformer: published fixtures on the packed and the published computation, packed ==
published, layouts, errors. "reference" builds the published computation
(:class:`fremure.model.published.PublishedTransformer`), "ops" the model's packed one."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

import fremure_ext
from fremure.compat import load_reference_state_dict
from fremure.model import FreqGate, GlocalTransformer
from fremure.model.layout import frame_layout, slot_order
from fremure.model.published import PublishedTransformer

from conftest import FWD_TOL, GRAD_TOL, load_fixture

CASES = ["plain", "plain_memory", "freq_attention", "freq_spatial", "freq_contact_emptyframe", "freq_contact_memory"]
BASE_OPS = ("segment_attention", "window_pack", "window_unpack")
OPS = BASE_OPS + ("freq_gate_blend", "gated_fusion")


def skip_unless(*names):
    missing = [name for name in names if not hasattr(fremure_ext, name)]
    return pytest.mark.skipif(bool(missing), reason=f"fremure_ext lacks {missing} (not merged yet)")


needs_ops = skip_unless(*OPS)
needs_base_ops = skip_unless(*BASE_OPS)


def transformer(kernels: str, **config) -> GlocalTransformer:
    """The packed model ("ops") or the published computation ("reference") of ``config``."""
    return PublishedTransformer(**config) if kernels == "reference" else GlocalTransformer(**config)


def build(config: dict, kernels: str, **overrides) -> GlocalTransformer:
    args = dict(embed_dim=config["embed_dim"], nhead=config["nhead"], dim_feedforward=config["dim_feedforward"],
                enc_layer_num=config["enc_layer_num"], dec_layer_num=config["dec_layer_num"],
                dropout=config["dropout"], mode=config["mode"], mem_compute=config.get("mem_compute"),
                mem_fusion=config.get("mem_fusion") or "late", selection=config.get("selection") or "manual",
                selection_lambda=config.get("selection_lambda", 0.5))
    args.update(overrides)
    return transformer(kernels, **args)


def fixture_memory(inputs: dict):
    if "memory_attention" not in inputs:
        return None
    return {"attention": inputs["memory_attention"], "spatial": inputs["memory_spatial"],
            "contacting": inputs["memory_contacting"]}


def run_fixture(fx: dict, model: GlocalTransformer, features: torch.Tensor):
    inputs = fx["inputs"]
    out = model(features, inputs["im_idx"], memory=fixture_memory(inputs), rel_type=fx["config"].get("rel_type"),
                freq=inputs.get("freq_tensor"))
    loss = (out.output * inputs["loss_weight_output"]).sum()
    loss = loss + (out.local_output * inputs["loss_weight_local_output"]).sum()
    loss.backward()
    return out


@pytest.mark.parametrize("kernels", ["reference", "ops"])
@pytest.mark.parametrize("case", CASES)
def test_reproduces_published_fixture(case, kernels):
    if kernels == "ops":
        missing = [n for n in (OPS if case.startswith("freq") else BASE_OPS) if not hasattr(fremure_ext, n)]
        if missing:
            pytest.skip(f"fremure_ext lacks {missing} (not merged yet)")
    fx = load_fixture(f"transformer_{case}.pt")
    model = load_reference_state_dict(build(fx["config"], kernels).eval(), fx["state_dict"])
    features = fx["inputs"]["features"].clone().requires_grad_()
    out = run_fixture(fx, model, features)
    expected = fx["outputs"]
    torch.testing.assert_close(out.output, expected["output"], **FWD_TOL)
    torch.testing.assert_close(out.local_output, expected["local_output"], **FWD_TOL)
    torch.testing.assert_close(out.mem_features, expected["mem_encoder_features"], **FWD_TOL)
    params = dict(model.named_parameters())
    got = {"features": features.grad, **{f"param.{k}": p.grad for k, p in params.items() if p.grad is not None}}
    assert set(got) == set(fx["grads"])
    for key, ref in fx["grads"].items():
        if kernels == "ops" and torch.isnan(ref).any():
            # The published padded encoder turns an empty frame's all-masked softmax into NaN
            # gradients for every local-attention parameter; the packed path has no such row.
            assert torch.isfinite(got[key]).all(), key
            continue
        torch.testing.assert_close(got[key], ref, equal_nan=True, **GRAD_TOL, msg=lambda m: f"{key}: {m}")


@needs_ops
def test_empty_frame_gradients_are_the_true_derivative():
    """Where the published gradient is NaN (empty frame), the packed path's gradient must be the
    directional derivative of the (NaN-free) forward, checked by central differences in float64."""
    fx = load_fixture("transformer_freq_contact_emptyframe.pt")
    inputs = fx["inputs"]
    model = load_reference_state_dict(build(fx["config"], "ops"), fx["state_dict"]).double().eval()
    reference = load_reference_state_dict(build(fx["config"], "reference"), fx["state_dict"]).double().eval()
    features = inputs["features"].double()
    freq = inputs["freq_tensor"]
    weights = inputs["loss_weight_output"].double(), inputs["loss_weight_local_output"].double()

    def loss(m):
        out = m(features, inputs["im_idx"], rel_type="contact", freq=freq)
        return (out.output * weights[0]).sum() + (out.local_output * weights[1]).sum()

    loss(model).backward()
    gen = torch.Generator().manual_seed(0)
    names = [n for n, _ in model.named_parameters() if n.startswith("local_attention.")]
    directions = {n: torch.randn(dict(model.named_parameters())[n].shape, generator=gen, dtype=torch.float64)
                  for n in names}
    analytic = sum((dict(model.named_parameters())[n].grad * d).sum() for n, d in directions.items())
    eps = 1e-6
    ref_params = dict(reference.named_parameters())
    with torch.no_grad():
        for n, d in directions.items():
            ref_params[n].add_(eps * d)
        plus = loss(reference)
        for n, d in directions.items():
            ref_params[n].sub_(2 * eps * d)
        minus = loss(reference)
    numeric = (plus - minus) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, atol=1e-6, rtol=1e-5)


def random_video(counts, dim, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    im_idx = torch.repeat_interleave(torch.arange(len(counts), dtype=torch.float32), torch.tensor(counts))
    features = torch.randn(int(sum(counts)), dim, generator=gen, dtype=dtype)
    return features, im_idx


def random_memory(dim, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {r: torch.randn(c, dim, generator=gen) for r, c in (("attention", 3), ("spatial", 6), ("contacting", 17))}


def perturb_norms(model: torch.nn.Module) -> None:
    """Moves LayerNorm affine parameters off their init (weight 1, bias 0), as training does.

    At init a LayerNorm output row sums to ~0, and the published decoder treats a row summing to
    exactly 0 as padding; which rows do depends on float rounding, so two correct computations
    could then disagree (see GlocalTransformer's zero_sum_padding)."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.2 * torch.randn(module.weight.shape, generator=gen))
                module.bias.add_(0.2 * torch.randn(module.bias.shape, generator=gen))


def compare_paths(config: dict, counts, rel_type=None, freq=None, memory=None):
    torch.manual_seed(0)
    ref = transformer("reference", **config).eval()
    perturb_norms(ref)
    ops = transformer("ops", **config).eval()
    ops.load_state_dict(ref.state_dict())
    features, im_idx = random_video(counts, config["embed_dim"])
    results = []
    for model in (ref, ops):
        x = features.clone().requires_grad_()
        out = model(x, im_idx, memory=memory, rel_type=rel_type, freq=freq)
        w = torch.linspace(-1, 1, out.output.numel()).view_as(out.output)
        ((out.output * w).sum() + (out.local_output * w.flip(0)).sum() + out.mem_features.square().mean()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, x.grad, grads))
    (o_ref, g_ref, p_ref), (o_ops, g_ops, p_ops) = results
    for a, b in zip(o_ref, o_ops):
        torch.testing.assert_close(b, a, **FWD_TOL)
    torch.testing.assert_close(g_ops, g_ref, **GRAD_TOL)
    assert set(p_ops) == set(p_ref)
    for name in p_ref:
        if torch.isnan(p_ref[name]).any():  # published NaN gradients of an empty frame (see above)
            assert torch.isfinite(p_ops[name]).all(), name
            continue
        torch.testing.assert_close(p_ops[name], p_ref[name], **GRAD_TOL, msg=lambda m: f"{name}: {m}")


SMALL = dict(embed_dim=32, nhead=4, dim_feedforward=64, enc_layer_num=1, dec_layer_num=2, dropout=0.0)
FREQ = {"attention": torch.tensor([0.6, 0.3, 0.1]), "spatial": torch.tensor([0.3, 0.2, 0.2, 0.1, 0.1, 0.1]),
        "contact": torch.linspace(0.01, 0.2, 17)}


@needs_ops
@pytest.mark.parametrize("mode,window,stride", [("latter", 2, 1), ("both", 2, 1), ("mean", 3, 2),
                                                ("weighted", 3, 1), ("latter", 4, 3)])
def test_ops_match_reference_windows(mode, window, stride):
    compare_paths(dict(SMALL, mode=mode, window=window, stride=stride), [2, 3, 1, 1, 4, 2, 1], "spatial",
                  FREQ["spatial"])


@needs_base_ops
@pytest.mark.parametrize("mode,window,stride,mem_compute", [("latter", 2, 1, "seperate"), ("mean", 3, 2, None),
                                                           ("weighted", 2, 1, "joint")])
def test_ops_match_reference_without_frequencies(mode, window, stride, mem_compute):
    config = dict(SMALL, mode=mode, window=window, stride=stride, mem_compute=mem_compute)
    compare_paths(config, [3, 1, 2, 4, 1], memory=random_memory(SMALL["embed_dim"]))


@needs_base_ops
def test_explicit_masks_make_paths_agree_at_init():
    """With untrained LayerNorms some decoder rows sum to exactly 0; with zero_sum_padding=False
    the reference path uses explicit masks like the ops path and the two agree."""
    torch.manual_seed(0)
    ref = transformer("reference", **SMALL, zero_sum_padding=False).eval()
    ops = transformer("ops", **SMALL).eval()
    ops.load_state_dict(ref.state_dict())
    for seed, counts in enumerate(([3, 1, 2, 4, 1], [2, 3, 1, 2], [3, 3])):
        features, im_idx = random_video(counts, SMALL["embed_dim"], seed=seed)
        torch.testing.assert_close(ops(features, im_idx).output, ref(features, im_idx).output, **FWD_TOL)


@needs_ops
@pytest.mark.parametrize("mem_compute,mem_fusion,selection", [("joint", "early", "manual"),
                                                               ("seperate", "late", "automated"),
                                                               ("seperate", "early", "automated")])
def test_ops_match_reference_memory(mem_compute, mem_fusion, selection):
    config = dict(SMALL, mem_compute=mem_compute, mem_fusion=mem_fusion, selection=selection)
    compare_paths(config, [3, 1, 2, 2], "attention", FREQ["attention"], random_memory(SMALL["embed_dim"]))


@needs_ops
@pytest.mark.parametrize("counts", [[3], [1, 1], [0, 2, 0, 0, 3]])
def test_ops_match_reference_short_and_sparse_videos(counts):
    compare_paths(dict(SMALL), counts, "contact", FREQ["contact"])


@needs_ops
def test_shared_encoders_equal_per_type_passes():
    """forward_types (encoders once, decoders batched) == three published per-type passes."""
    torch.manual_seed(0)
    model = transformer("ops", **SMALL, mem_compute="joint").eval()
    perturb_norms(model)
    reference = transformer("reference", **SMALL, mem_compute="joint").eval()
    reference.load_state_dict(model.state_dict())
    features, im_idx = random_video([2, 3, 1, 2], SMALL["embed_dim"])
    memory = random_memory(SMALL["embed_dim"])
    together = model.forward_types(features, im_idx, memory, FREQ)
    for rel_type, freq in FREQ.items():
        single = reference(features, im_idx, memory=memory, rel_type=rel_type, freq=freq)
        for a, b in zip(together[rel_type], single):
            torch.testing.assert_close(a, b, **FWD_TOL)


def test_freq_gate_fixture():
    fx = load_fixture("freq_gate_d48.pt")
    gate = FreqGate(d_model=fx["config"]["d_model"], hidden=fx["config"]["hidden"], tau=fx["config"]["tau"])
    gate.load_state_dict(fx["state_dict"])
    for name in ("attention", "spatial", "contact", "raw_counts"):
        torch.testing.assert_close(gate(fx["inputs"][f"freq_{name}"]), fx["outputs"][name], **FWD_TOL)


def test_log_inverse_gate_runs_and_differs_from_stats():
    torch.manual_seed(0)
    model = transformer("reference", **SMALL, gate="log_inverse").eval()
    features, im_idx = random_video([2, 2, 1], SMALL["embed_dim"])
    out = model(features, im_idx, rel_type="spatial", freq=FREQ["spatial"])
    plain = model(features, im_idx)
    assert out.output.shape == features.shape and torch.isfinite(out.output).all()
    assert not torch.allclose(out.local_output, plain.local_output)


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 4), min_size=1, max_size=9).filter(lambda c: c[-1] > 0),
       window=st.integers(1, 4), stride=st.integers(1, 4))
def test_window_pack_matches_enumeration(counts, window, stride):
    """The windows the model packs (op and reference) are the published enumeration of starts."""
    im_idx = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    layout = frame_layout(im_idx, im_idx.shape[0])
    b = len(counts)
    starts = list(range(0, b - window + 1, stride)) if b >= window else []
    if starts and starts[-1] + window < b:
        starts.append(b - window)
    entries = []
    for w, s in enumerate(starts):
        rows = [i for i, f in enumerate(im_idx.tolist()) if s <= f < s + window]
        entries += [(w, r, src, im_idx[src].item() - s) for r, src in enumerate(rows)]
    x = torch.randn(im_idx.shape[0], 3)
    for pack in (fremure_ext.window_pack, fremure_ext.reference.window_pack):
        _, src, position, offsets = pack(x, layout.offsets, window, stride)
        window_id = torch.repeat_interleave(torch.arange(offsets.shape[0] - 1), offsets.diff())
        row = torch.arange(src.shape[0]) - offsets[window_id]
        got = list(zip(window_id.tolist(), row.tolist(), src.tolist(), position.tolist()))
        assert got == entries
        assert offsets.shape[0] - 1 == len(starts)


def test_slot_order_groups_rows_by_slot():
    layout = frame_layout(torch.tensor([0, 0, 0, 1, 2, 2]), 6)
    order, offsets = slot_order(layout)
    assert order.tolist() == [0, 3, 4, 1, 5, 2] and offsets.tolist() == [0, 3, 5, 6]


@pytest.mark.parametrize("im_idx,message", [
    (torch.tensor([0.0, 1.0, 0.0]), "sorted"),
    (torch.tensor([0.0, 0.5, 1.0]), "whole frame numbers"),
    (torch.tensor([-1.0, 0.0, 1.0]), ">= 0"),
    (torch.tensor([0.0, 1.0]), r"\[N\] with N = 3"),
])
def test_bad_im_idx(im_idx, message):
    model = transformer("reference", **SMALL)
    with pytest.raises(ValueError, match=message):
        model(torch.randn(3, SMALL["embed_dim"]), im_idx)


def test_bad_arguments():
    model = transformer("reference", **SMALL, mem_compute="joint")
    features, im_idx = random_video([2, 1], SMALL["embed_dim"])
    with pytest.raises(ValueError, match=r"freq for 'spatial' must have shape \[6\]"):
        model(features, im_idx, rel_type="spatial", freq=torch.rand(17))
    with pytest.raises(ValueError, match="rel_type must be one of"):
        model(features, im_idx, rel_type=None, freq=torch.rand(3))
    with pytest.raises(ValueError, match=r"features must be \[N, 32\]"):
        model(torch.randn(3, 8), im_idx)
    with pytest.raises(ValueError, match="memory must have the keys"):
        model(features, im_idx, memory={"attention": torch.randn(3, 32)})
    with pytest.raises(ValueError, match="mode must be one of"):
        GlocalTransformer(**SMALL, mode="first")
    with pytest.raises(ValueError, match="kernels must be one of"):
        fremure_ext.dispatch.set_kernels("fast")


def test_single_frame_video_gives_zero_output_as_published():
    model = transformer("reference", **SMALL).eval()
    features, im_idx = random_video([3], SMALL["embed_dim"])
    out = model(features, im_idx)
    assert torch.equal(out.output, torch.zeros_like(features))


def test_keys_match_published_layout():
    fx = load_fixture("transformer_freq_contact_memory.pt")
    model = build(fx["config"], "reference")
    assert list(model.state_dict()) == list(fx["state_dict"])
    assert [k for k in itertools.chain(model.state_dict()) if k.startswith("global_attention_tail")]


@needs_ops
def test_compile_fullgraph_ops_path():
    """The packed path traces into one graph (frame counts become unbacked symbolic sizes)."""
    torch.manual_seed(0)
    model = transformer("ops", **SMALL, mem_compute="joint").eval()
    features, im_idx = random_video([2, 3, 1, 2], SMALL["embed_dim"])
    memory = random_memory(SMALL["embed_dim"])
    rel_type, freq = "spatial", FREQ["spatial"]
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x_eager, x_comp = features.clone().requires_grad_(), features.clone().requires_grad_()
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        out = compiled(x_comp, im_idx, memory, rel_type, freq)
    ref = model(x_eager, im_idx, memory, rel_type, freq)
    torch.testing.assert_close(out.output, ref.output, **FWD_TOL)
    out.output.sum().backward()
    ref.output.sum().backward()
    torch.testing.assert_close(x_comp.grad, x_eager.grad, **GRAD_TOL)


@needs_ops
@pytest.mark.parametrize("mode", ["latter", "mean"])
def test_compile_one_graph_for_short_and_long_videos(mode):
    """One fullgraph trace serves videos of N rows with fewer frames than the window (no window:
    the published all-zero output), exactly as many and more: the frame and window counts are
    unbacked sizes, so a new frame count does not recompile."""
    torch.manual_seed(0)
    model = GlocalTransformer(embed_dim=16, nhead=2, dim_feedforward=32, dec_layer_num=2, dropout=0.0,
                              mode=mode).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    videos = [random_video([4], 16, seed=1), random_video([1, 2, 1], 16, seed=2), random_video([2, 2], 16, seed=3)]
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        for i, (features, im_idx) in enumerate(videos):
            x_comp, x_eager = features.clone().requires_grad_(), features.clone().requires_grad_()
            with torch._dynamo.config.patch(error_on_recompile=i > 0):
                out = compiled(x_comp, im_idx, None, "spatial", FREQ["spatial"])
            ref = model(x_eager, im_idx, None, "spatial", FREQ["spatial"])
            torch.testing.assert_close(out.output, ref.output, **FWD_TOL)
            weight = torch.randn_like(features)
            (out.output * weight).sum().backward()
            if i == 0:  # eager returns detached zeros
                assert torch.equal(ref.output, torch.zeros_like(features))
                assert torch.equal(x_comp.grad, torch.zeros_like(features))
                continue
            assert ref.output.abs().sum() > 0
            (ref.output * weight).sum().backward()
            torch.testing.assert_close(x_comp.grad, x_eager.grad, **GRAD_TOL)
