"""window_pack / window_unpack: CPU kernels vs reference and vs the published layouts, autograd,
opcheck, compile, fuzzing and bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings, strategies as st

import fremure_ext
from fremure_ext import reference

import published_layouts as published
from conftest import FWD_TOL, GRAD_TOL, NO_KERNEL_PATHS, call_without_kernel, kernel_only, load_fixture

MODES = ("latter", "mean", "weighted", "sum")

# (frame counts, description): zero-row frames first / middle / last, one frame, no rows at all.
COUNTS = [
    [3, 1, 4, 1, 5, 2, 6],
    [0, 2, 3, 1],
    [2, 0, 0, 3, 1],
    [1, 2, 3, 0],
    [4],
    [0, 0, 0],
    [2, 3, 1, 2, 2, 1, 3, 2, 1, 2],
]
GEOMETRIES = [(1, 1), (2, 1), (3, 2), (4, 1), (2, 3), (3, 3), (5, 2)]


def _offsets(counts) -> torch.Tensor:
    return torch.tensor([0, *counts], dtype=torch.long).cumsum(0)


def _rows(n, dim=6, dtype=torch.float64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype) + 0.5


def _frame_of_row(counts) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))


def _expected_windows(b, window, stride):
    starts = list(range(0, b - window + 1, stride))
    if starts and starts[-1] + window < b:
        starts.append(b - window)
    return starts


# ---------------------------------------------------------------------------------------------
# Forward / backward against the reference.


@pytest.mark.parametrize("counts", COUNTS)
@pytest.mark.parametrize("window, stride", GEOMETRIES)
@pytest.mark.parametrize("padded", [False, True])
def test_pack_matches_reference(counts, window, stride, padded):
    off = _offsets(counts)
    x = _rows(int(off[-1]), seed=len(counts))
    xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = fremure_ext.window_pack(xs, off, window, stride, padded)
    ref = reference.window_pack(xr, off, window, stride, padded)
    for name, a, b in zip(got._fields, got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    n_win = len(_expected_windows(len(counts), window, stride))
    assert got.window_offsets.shape == (n_win + 1,)
    assert fremure_ext.window_count(len(counts), window, stride) == n_win
    assert not got.src_index.requires_grad and not got.position.requires_grad
    w = torch.randn_like(got.out)
    if ref[0].requires_grad:  # the reference's zero-filled output has no graph when no window exists
        (got.out * w).sum().backward()
        (ref[0] * w).sum().backward()
        torch.testing.assert_close(xs.grad, xr.grad, **GRAD_TOL)


@pytest.mark.parametrize("counts", COUNTS)
@pytest.mark.parametrize("window, stride", GEOMETRIES)
@pytest.mark.parametrize("padded", [False, True])
def test_unpack_matches_reference(counts, window, stride, padded):
    off = _offsets(counts)
    n = int(off[-1])
    packed = fremure_ext.window_pack(_rows(n), off, window, stride, padded)
    y = _rows(packed.out.numel() // 6, seed=1).reshape(packed.out.shape)
    g = torch.Generator().manual_seed(2)
    weights = torch.rand(packed.src_index.shape, generator=g, dtype=torch.float64) + 0.1
    covered = torch.zeros(n, dtype=torch.bool)
    covered[packed.src_index[packed.src_index >= 0]] = True
    for mode in MODES:
        ys, yr = y.clone().requires_grad_(), y.clone().requires_grad_()
        ws, wr = weights.clone().requires_grad_(), weights.clone().requires_grad_()
        out = fremure_ext.window_unpack(ys, packed.src_index, ws, n, mode)
        ref = reference.window_unpack(yr, packed.src_index, wr, n, mode)
        torch.testing.assert_close(out, ref, **FWD_TOL, msg=mode)
        # Frames that no window covers (stride > window) come back as zero rows.
        assert bool((out[~covered] == 0).all())
        if n and ref.requires_grad:
            gout = torch.randn_like(out)
            (out * gout).sum().backward()
            (ref * gout).sum().backward()
            torch.testing.assert_close(ys.grad, yr.grad, **GRAD_TOL, msg=mode)
            if mode == "weighted":
                torch.testing.assert_close(ws.grad, wr.grad, **GRAD_TOL)
            else:
                assert ws.grad is None


def test_unpack_modes_by_hand():
    # Two windows holding row 0 (copies a, b) and row 1 once (c); row 2 in no window.
    y = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0]])
    src = torch.tensor([0, 1, 0])
    w = torch.tensor([1.0, 2.0, 3.0])
    out = {m: fremure_ext.window_unpack(y, src, w, 3, m) for m in MODES}
    torch.testing.assert_close(out["latter"], torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]))
    torch.testing.assert_close(out["mean"], torch.tensor([[5.5, 11.0], [3.0, 4.0], [0.0, 0.0]]))
    torch.testing.assert_close(out["sum"], torch.tensor([[11.0, 22.0], [3.0, 4.0], [0.0, 0.0]]))
    torch.testing.assert_close(out["weighted"], torch.tensor([[7.75, 15.5], [3.0, 4.0], [0.0, 0.0]]))
    # A row whose weights sum to zero is 0, with zero gradients.
    wz = torch.tensor([0.0, 2.0, 0.0], requires_grad=True)
    yz = y.clone().requires_grad_()
    oz = fremure_ext.window_unpack(yz, src, wz, 3, "weighted")
    torch.testing.assert_close(oz[0], torch.zeros(2))
    oz.sum().backward()
    torch.testing.assert_close(yz.grad, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(wz.grad, torch.zeros(3))


def test_pack_backward_is_deterministic_scatter_add():
    off = _offsets([2, 3, 1, 2, 4])
    packed = fremure_ext.window_pack(_rows(12), off, 3, 1, True)
    g = torch.randn_like(packed.out)
    a = torch.ops.fremure.window_pack_backward(g, packed.src_index, 12)
    b = torch.ops.fremure.window_pack_backward(g, packed.src_index, 12)
    assert torch.equal(a, b)
    flat = packed.src_index.reshape(-1)
    keep = flat >= 0
    expected = torch.zeros(12, 6, dtype=g.dtype).index_add_(0, flat[keep], g.reshape(-1, 6)[keep])
    torch.testing.assert_close(a, expected)


# ---------------------------------------------------------------------------------------------
# The published layouts (window 1 = frame packing, window 2 = global input) and scatters.

PUBLISHED_COUNTS = [[3, 1, 4, 1, 5], [3, 0, 2, 2, 1, 3], [0, 2, 2], [2, 0, 0, 1], [2, 5], [1, 1, 1, 1]]


@pytest.mark.parametrize("counts", PUBLISHED_COUNTS)
def test_window1_is_published_frame_packing(counts):
    off = _offsets(counts)
    x = _rows(int(off[-1]), dim=8)
    im_idx = _frame_of_row(counts)
    rel_input, masks = published.published_frame_pack(x, im_idx)
    packed = fremure_ext.window_pack(x, off, 1, 1, True)
    torch.testing.assert_close(packed.out, rel_input.transpose(0, 1), rtol=0, atol=0)
    assert torch.equal(packed.src_index < 0, masks)
    assert bool((packed.position[~masks] == 0).all())
    # The local branch's unpack (valid rows in packed order) is window_unpack of window 1.
    local = packed.out.reshape(-1, 8)[~masks.reshape(-1)]
    torch.testing.assert_close(fremure_ext.window_unpack(packed.out, packed.src_index, None, x.shape[0], "latter"),
                               local, rtol=0, atol=0)


@pytest.mark.parametrize("counts", PUBLISHED_COUNTS)
def test_window2_is_published_global_input(counts):
    off = _offsets(counts)
    x = _rows(int(off[-1]), dim=8)
    im_idx = _frame_of_row(counts)
    table = torch.rand(2, 8, dtype=x.dtype)
    global_input, position_embed, idx, global_masks = published.published_global_input(x, im_idx, table)
    packed = fremure_ext.window_pack(x, off, 2, 1, True)
    torch.testing.assert_close(packed.out, global_input.transpose(0, 1), rtol=0, atol=0)
    pad = packed.src_index < 0
    assert torch.equal(pad, global_masks)
    frame = torch.where(pad, -1, im_idx[packed.src_index.clamp(min=0)])
    assert torch.equal(frame, idx.t())
    ours = torch.where(pad[..., None], 0.0, table[packed.position.clamp(min=0)])
    torch.testing.assert_close(ours, position_embed.transpose(0, 1), rtol=0, atol=0)


@pytest.mark.parametrize("counts", PUBLISHED_COUNTS)
@pytest.mark.parametrize("mode, published_mode", [("latter", "latter"), ("mean", "both")])
def test_window2_unpack_is_published_scatter(counts, mode, published_mode):
    off = _offsets(counts)
    n = int(off[-1])
    im_idx = _frame_of_row(counts)
    packed = fremure_ext.window_pack(_rows(n, dim=8), off, 2, 1, True)
    _, _, idx, _ = published.published_global_input(_rows(n, dim=8), im_idx, torch.zeros(2, 8))
    y = torch.randn(packed.out.shape, dtype=torch.float64)
    ys, yr = y.clone().requires_grad_(), y.clone().requires_grad_()
    ours = fremure_ext.window_unpack(ys, packed.src_index, None, n, mode)
    theirs = published.published_global_scatter(yr.transpose(0, 1), idx, im_idx, n, published_mode)
    torch.testing.assert_close(ours, theirs, **FWD_TOL)
    g = torch.randn_like(ours)
    (ours * g).sum().backward()
    (theirs * g).sum().backward()
    torch.testing.assert_close(ys.grad, yr.grad, **GRAD_TOL)


def test_fixture_video_layout():
    """The empty-frame fixture's video (frame counts 3, 0, 2, 2, 1, 3) and its position table."""
    fx = load_fixture("transformer_freq_contact_emptyframe.pt")
    counts = fx["config"]["counts"]
    x = fx["inputs"]["features"]
    im_idx = fx["inputs"]["im_idx"].long()
    table = fx["state_dict"]["position_embedding.weight"]
    assert torch.equal(im_idx, _frame_of_row(counts))
    packed = fremure_ext.window_pack(x, _offsets(counts), 2, 1, True)
    global_input, position_embed, _, global_masks = published.published_global_input(x, im_idx, table)
    torch.testing.assert_close(packed.out, global_input.transpose(0, 1), rtol=0, atol=0)
    assert torch.equal(packed.src_index < 0, global_masks)
    pos = torch.where((packed.src_index < 0)[..., None], 0.0, table[packed.position.clamp(min=0)])
    torch.testing.assert_close(pos, position_embed.transpose(0, 1), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Edge cases.


def test_one_frame_has_no_window_and_unpacks_to_zero():
    off = _offsets([3])
    x = _rows(3)
    packed = fremure_ext.window_pack(x, off, 2, 1, True)
    assert packed.out.shape == (0, 6, 6) and packed.window_offsets.tolist() == [0]
    for mode in MODES:
        w = torch.ones(packed.src_index.shape, dtype=x.dtype)
        torch.testing.assert_close(fremure_ext.window_unpack(packed.out, packed.src_index, w, 3, mode),
                                   torch.zeros(3, 6, dtype=x.dtype))
    # window 1 on the same frame is a plain copy
    one = fremure_ext.window_pack(x, off, 1, 1, False)
    torch.testing.assert_close(one.out, x)
    assert one.position.tolist() == [0, 0, 0]


@pytest.mark.parametrize("padded", [False, True])
def test_empty_x(padded):
    off = torch.zeros(5, dtype=torch.long)  # 4 frames, no rows
    x = torch.zeros(0, 7, requires_grad=True)
    packed = fremure_ext.window_pack(x, off, 2, 1, padded)
    assert packed.out.shape == ((3, 0, 7) if padded else (0, 7))
    assert packed.window_offsets.tolist() == [0, 0, 0, 0]
    packed.out.sum().backward()
    assert x.grad.shape == (0, 7)
    out = fremure_ext.window_unpack(packed.out, packed.src_index, None, 0, "mean")
    assert out.shape == (0, 7)
    # no frames at all
    none = fremure_ext.window_pack(torch.zeros(0, 7), torch.zeros(1, dtype=torch.long), 1, 1, padded)
    assert none.window_offsets.tolist() == [0] and none.out.shape[-1] == 7


def test_stride_larger_than_window_leaves_gaps():
    counts = [1, 2, 1, 2, 1, 2, 1]  # windows [0,2) [3,5) and the closing [5,7); frame 2 in none
    off = _offsets(counts)
    x = _rows(10)
    packed = fremure_ext.window_pack(x, off, 2, 3, False)
    assert packed.window_offsets.tolist() == [0, 3, 6, 9]
    out = fremure_ext.window_unpack(packed.out, packed.src_index, None, 10, "latter")
    gap = _frame_of_row(counts) == 2
    assert bool((out[gap] == 0).all())
    torch.testing.assert_close(out[~gap], x[~gap])


def test_window_geometry():
    assert [fremure_ext.window_count(b, 2, 1) for b in range(5)] == [0, 0, 1, 2, 3]
    assert fremure_ext.window_count(7, 3, 2) == 3  # [0,3) [2,5) [4,7)
    assert fremure_ext.window_count(8, 3, 2) == 4  # ... and the closing [5,8)
    assert fremure_ext.window_count(6, 4, 1) == 3
    assert fremure_ext.window_count(3, 5, 1) == 0
    off = _offsets([1] * 8)
    packed = fremure_ext.window_pack(_rows(8), off, 3, 2, False)
    assert packed.src_index.tolist() == [0, 1, 2, 2, 3, 4, 4, 5, 6, 5, 6, 7]
    assert packed.position.tolist() == [0, 1, 2] * 4


def test_non_contiguous_inputs():
    counts = [2, 3, 0, 4, 1]
    off = _offsets(counts)
    base = _rows(10, dim=12)
    xt = base.t().contiguous().t()
    assert not xt.is_contiguous()
    got = fremure_ext.window_pack(xt, off, 2, 1, True)
    torch.testing.assert_close(got.out, reference.window_pack(base, off, 2, 1, True)[0], rtol=0, atol=0)
    y = torch.randn(got.out.shape[0], got.out.shape[2], got.out.shape[1], dtype=base.dtype).transpose(1, 2)
    w = torch.rand(got.src_index.shape[1], got.src_index.shape[0], dtype=base.dtype).t()
    assert not y.is_contiguous() and not w.is_contiguous()
    for mode in MODES:
        torch.testing.assert_close(fremure_ext.window_unpack(y, got.src_index, w, 10, mode),
                                   reference.window_unpack(y.contiguous(), got.src_index, w.contiguous(), 10, mode),
                                   **FWD_TOL)
    # frame_offsets as a strided view
    off_strided = torch.stack([off, off], 1)[:, 0]
    assert not off_strided.is_contiguous()
    torch.testing.assert_close(fremure_ext.window_pack(base, off_strided, 2, 1, False).out,
                               fremure_ext.window_pack(base, off, 2, 1, False).out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision(dtype):
    off = _offsets([2, 3, 1, 4])
    x = _rows(10, dim=16, dtype=torch.float32).to(dtype)
    packed = fremure_ext.window_pack(x, off, 2, 1, True)
    assert packed.out.dtype == dtype
    torch.testing.assert_close(packed.out, reference.window_pack(x, off, 2, 1, True)[0], rtol=0, atol=0)
    w = torch.rand(packed.src_index.shape).to(dtype)
    tol = dict(atol=1e-2, rtol=1e-2) if dtype != torch.float32 else FWD_TOL
    for mode in MODES:
        out = fremure_ext.window_unpack(packed.out, packed.src_index, w, 10, mode)
        ref = reference.window_unpack(packed.out.float(), packed.src_index, w.float(), 10, mode)
        torch.testing.assert_close(out.float(), ref, **tol)


# ---------------------------------------------------------------------------------------------
# Autograd, opcheck, compile.


@pytest.mark.parametrize("padded", [False, True])
def test_gradcheck_pack(padded):
    off = _offsets([2, 0, 3, 1, 2])
    x = _rows(8, dim=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: fremure_ext.window_pack(a, off, 3, 1, padded).out, (x,))
    x2 = _rows(8, dim=1).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a: fremure_ext.window_pack(a, off, 3, 2, padded).out, (x2,))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padded", [False, True])
def test_gradcheck_unpack(mode, padded):
    off = _offsets([2, 0, 3, 1, 2])
    packed = fremure_ext.window_pack(_rows(8, dim=3), off, 2, 1, padded)
    y = torch.randn(packed.out.shape, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(packed.src_index.shape, dtype=torch.float64) + 0.2).requires_grad_(mode == "weighted")

    def fn(a, b):
        return fremure_ext.window_unpack(a, packed.src_index, b, 8, mode)

    assert torch.autograd.gradcheck(fn, (y, w))
    if mode != "weighted":
        assert torch.autograd.gradgradcheck(fn, (y, w))


@pytest.mark.parametrize("padded", [False, True])
def test_opcheck(padded):
    off = _offsets([2, 0, 3, 1, 2])
    x = _rows(8, dim=5).requires_grad_()
    torch.library.opcheck(torch.ops.fremure.window_pack.default, (x, off, 2, 1, padded))
    packed = fremure_ext.window_pack(x.detach(), off, 2, 1, padded)
    torch.library.opcheck(torch.ops.fremure.window_pack_backward.default,
                          (torch.randn_like(packed.out), packed.src_index, 8))
    for mode in MODES:
        y = torch.randn_like(packed.out).requires_grad_()
        w = (torch.rand(packed.src_index.shape, dtype=y.dtype) + 0.1).requires_grad_() if mode == "weighted" else None
        torch.library.opcheck(torch.ops.fremure.window_unpack.default, (y, packed.src_index, w, 8, mode))
        torch.library.opcheck(torch.ops.fremure.window_unpack_backward.default,
                              (torch.randn(8, 5, dtype=y.dtype), y.detach(), packed.src_index,
                               None if w is None else w.detach(), mode))


class _WindowBlock(torch.nn.Module):
    """Pack -> position embedding + nonlinearity -> unpack, as the global branch does."""

    def __init__(self, padded: bool, mode: str, pack_in_graph: bool):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8, dtype=torch.float64)
        self.pos = torch.nn.Embedding(2, 8, dtype=torch.float64)
        self.padded, self.mode, self.pack_in_graph = padded, mode, pack_in_graph

    def forward(self, x, off, packed_src=None, packed_pos=None):
        if self.pack_in_graph:
            out, packed_src, packed_pos, _ = fremure_ext.window_pack(self.proj(x), off, 2, 1, self.padded)
        else:
            out = self.proj(x)[packed_src.clamp(min=0)] * (packed_src >= 0)[..., None]
        h = torch.tanh(out + self.pos(packed_pos.clamp(min=0)))
        w = torch.sigmoid(h.sum(-1)) if self.mode == "weighted" else None
        return fremure_ext.window_unpack(h, packed_src, w, x.shape[0], self.mode)


def _check_compiled(model, args, backend):
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out, ref = compiled(*args), model(*args)
    torch.testing.assert_close(out, ref, **FWD_TOL)
    g = torch.randn_like(ref)
    got = torch.autograd.grad((out * g).sum(), list(model.parameters()))
    want = torch.autograd.grad((ref * g).sum(), list(model.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **GRAD_TOL)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("mode", ["latter", "weighted"])
def test_torch_compile_fullgraph_pack_and_unpack(padded, mode):
    # window_pack's output row count is data-dependent: dynamo must capture it as an unbacked size.
    off = _offsets([2, 0, 3, 1, 2])
    x = _rows(8, dim=8)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        _check_compiled(_WindowBlock(padded, mode, pack_in_graph=True), (x, off), "aot_eager")


def test_torch_compile_fullgraph_unpack_inductor():
    off = _offsets([2, 0, 3, 1, 2])
    x = _rows(8, dim=8)
    packed = fremure_ext.window_pack(x, off, 2, 1, True)
    torch._dynamo.reset()
    _check_compiled(_WindowBlock(True, "mean", pack_in_graph=False), (x, off, packed.src_index, packed.position),
                    "inductor")


# ---------------------------------------------------------------------------------------------
# Fuzzing.


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 4), min_size=0, max_size=9), window=st.integers(1, 4),
       stride=st.integers(1, 4), padded=st.booleans(), mode=st.sampled_from(MODES))
def test_fuzz(counts, window, stride, padded, mode):
    off = _offsets(counts)
    n = int(off[-1])
    x = _rows(n, dim=3, seed=n)
    got = fremure_ext.window_pack(x, off, window, stride, padded)
    ref = reference.window_pack(x, off, window, stride, padded)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    assert got.window_offsets.shape[0] == len(_expected_windows(len(counts), window, stride)) + 1
    # every frame of a covered video is in some window (gaps only when stride > window)
    if len(counts) >= window and stride <= window:
        assert set(got.src_index[got.src_index >= 0].tolist()) == set(range(n))
    w = torch.rand(got.src_index.shape, dtype=x.dtype)
    torch.testing.assert_close(fremure_ext.window_unpack(got.out, got.src_index, w, n, mode),
                               reference.window_unpack(got.out, got.src_index, w, n, mode), **FWD_TOL)


# ---------------------------------------------------------------------------------------------
# Bad inputs: the wrapper, the op itself and its fake kernel raise TypeError/ValueError naming the
# argument.

_X = torch.randn(6, 4)
_OFF = _offsets([2, 3, 1])


_BAD_PACK = [
    ((_X, _OFF, 0, 1, False), ValueError, "window"),
    ((_X, _OFF, -2, 1, False), ValueError, "window"),
    ((_X, _OFF, 2 ** 62, 1, True), ValueError, r"window must be <= 2147483647 \(2\*\*31 - 1\), got 4611686018427387904"),
    ((_X, _OFF, 2 ** 62, 1, False), ValueError, "window must be <= 2147483647"),
    ((_X, _OFF, 2, 0, False), ValueError, "stride"),
    ((_X, _OFF, 2, -1, True), ValueError, "stride"),
    ((_X, _OFF.int(), 2, 1, False), TypeError, "frame_offsets"),
    ((_X, _OFF.float(), 2, 1, False), TypeError, "frame_offsets"),
    ((_X, _OFF[None], 2, 1, False), ValueError, "frame_offsets"),
    ((_X, torch.zeros(0, dtype=torch.long), 2, 1, False), ValueError, "frame_offsets"),
    ((_X, _OFF.to("meta"), 2, 1, False), ValueError, "frame_offsets"),
    ((_X.int(), _OFF, 2, 1, False), TypeError, "x"),
    ((_X[None], _OFF, 2, 1, False), ValueError, "x"),
    ((_X, _OFF, 2.0, 1, False), TypeError, "window"),
    ((_X, _OFF, 2, 1, 1), TypeError, "padded"),
]
# Bad offset values: read by the compiled kernels alone.
_BAD_PACK_VALUES = [((_X, torch.tensor(o), 2, 1, False), ValueError, "frame_offsets")
                    for o in ([0, 3, 2, 6], [1, 3, 4, 6], [0, 3, 4, 7], [0, 3, 4, 5])]


@pytest.mark.parametrize("args, exc, match", _BAD_PACK + _BAD_PACK_VALUES)
def test_pack_bad_inputs(args, exc, match):
    with pytest.raises(exc, match=match):
        fremure_ext.window_pack(*args)


@pytest.mark.parametrize("path", NO_KERNEL_PATHS)
@pytest.mark.parametrize("args, exc, match", [c for c in _BAD_PACK if not kernel_only(c[0])])
def test_pack_bad_inputs_without_the_compiled_kernel(path, args, exc, match):
    with pytest.raises(exc, match=match):
        call_without_kernel(path, fremure_ext.window_pack, args)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((_X, _OFF, 0, 1, False), ValueError, "window must be >= 1"),
        ((_X, _OFF, 2, -1, False), ValueError, "stride must be >= 1"),
        ((_X, _OFF.int(), 2, 1, False), TypeError, "frame_offsets must be an int64"),
        ((_X, torch.tensor([0, 3, 2, 6]), 2, 1, False), ValueError, "frame_offsets must be nondecreasing"),
        ((_X, torch.tensor([1, 3, 4, 6]), 2, 1, False), ValueError, r"frame_offsets\[0\] must be 0"),
        ((_X, torch.tensor([0, 3, 4, 7]), 2, 1, False), ValueError, r"frame_offsets\[-1\] must equal"),
        ((_X, _OFF[None], 2, 1, False), ValueError, "frame_offsets must be a 1-D"),
        ((_X, _OFF.to("meta"), 2, 1, False), ValueError, "frame_offsets must be on the same device"),
        ((_X.int(), _OFF, 2, 1, False), TypeError, "x must be a floating"),
        ((_X[None], _OFF, 2, 1, False), ValueError, "x must be"),
    ],
)
def test_pack_bad_inputs_direct(args, exc, match):
    with pytest.raises(exc, match=match):
        torch.ops.fremure.window_pack(*args)


_P = fremure_ext.window_pack(_X, _OFF, 2, 1, True)
_W = torch.rand(_P.src_index.shape)


_BAD_UNPACK = [
    ((_P.out, _P.src_index, None, 6, "weighted"), ValueError, "weights"),
    ((_P.out, _P.src_index, _W, 6, "both"), ValueError, "mode.*'latter', 'mean', 'weighted', 'sum'"),
    ((_P.out, _P.src_index, _W, 6, "Latter"), ValueError, "mode"),
    ((_P.out, _P.src_index, _W.double(), 6, "weighted"), TypeError, "weights"),
    ((_P.out, _P.src_index, _W[:, :1], 6, "weighted"), ValueError, "weights"),
    ((_P.out, _P.src_index.int(), None, 6, "latter"), TypeError, "src_index"),
    ((_P.out, _P.src_index[:, :2], None, 6, "latter"), ValueError, "src_index"),
    ((_P.out, _P.src_index.to("meta"), None, 6, "latter"), ValueError, "src_index"),
    ((_P.out.long(), _P.src_index, None, 6, "latter"), TypeError, "y"),
    ((_P.out[0, 0], _P.src_index[0, 0], None, 6, "latter"), ValueError, "y"),
    ((_P.out, _P.src_index, None, -1, "latter"), ValueError, "num_rows"),
]
# Bad weight and index values: read by the compiled kernels alone.
_BAD_UNPACK_VALUES = [
    ((_P.out, _P.src_index, -_W - 1, 6, "weighted"), ValueError, "weights"),
    ((_P.out, _P.src_index, None, 5, "latter"), ValueError, "src_index"),
    ((_P.out, _P.src_index - 2, None, 6, "latter"), ValueError, "src_index"),
]


@pytest.mark.parametrize("args, exc, match", _BAD_UNPACK + _BAD_UNPACK_VALUES)
def test_unpack_bad_inputs(args, exc, match):
    with pytest.raises(exc, match=match):
        fremure_ext.window_unpack(*args)


@pytest.mark.parametrize("path", NO_KERNEL_PATHS)
@pytest.mark.parametrize("args, exc, match", [c for c in _BAD_UNPACK if not kernel_only(c[0])])
def test_unpack_bad_inputs_without_the_compiled_kernel(path, args, exc, match):
    with pytest.raises(exc, match=match):
        call_without_kernel(path, fremure_ext.window_unpack, args)


@pytest.mark.parametrize(
    "op, args, exc, match",
    [
        ("window_unpack", (_P.out, _P.src_index, None, 6, "weighted"), ValueError, "weights must be given"),
        ("window_unpack", (_P.out, _P.src_index, _W, 6, "both"), ValueError, "mode must be one of 'latter', 'mean'"),
        ("window_unpack", (_P.out, _P.src_index, -_W, 6, "weighted"), ValueError, "weights must be >= 0"),
        ("window_unpack", (_P.out, _P.src_index, _W.double(), 6, "weighted"), TypeError, "weights must have the dtype"),
        ("window_unpack", (_P.out, _P.src_index, None, 5, "latter"), ValueError, "src_index values must be in"),
        ("window_unpack", (_P.out, _P.src_index - 2, None, 6, "mean"), ValueError, "src_index values must be in"),
        ("window_unpack", (_P.out, _P.src_index.int(), None, 6, "latter"), TypeError, "src_index must be an int64"),
        ("window_unpack", (_P.out, _P.src_index[:, :2], None, 6, "latter"), ValueError, "src_index must have shape"),
        ("window_unpack", (_P.out, _P.src_index, None, -1, "latter"), ValueError, "num_rows must be >= 0"),
        ("window_unpack", (_P.out.long(), _P.src_index, None, 6, "latter"), TypeError, "y must be a floating"),
        ("window_unpack", (_P.out, _P.src_index.to("meta"), None, 6, "latter"),
         ValueError, "src_index must be on the same device"),
        ("window_pack_backward", (_P.out, _P.src_index.to("meta"), 6),
         ValueError, "src_index must be on the same device"),
        ("window_unpack_backward", (torch.randn(6, 4), _P.out, _P.src_index, None, "max"),
         ValueError, "mode must be one of"),
        ("window_unpack_backward", (torch.randn(6, 5), _P.out, _P.src_index, None, "sum"),
         ValueError, "grad_out must have 4"),
        ("window_unpack_backward", (torch.randn(6, 4).double(), _P.out, _P.src_index, None, "sum"),
         TypeError, "grad_out must have the dtype"),
        ("window_unpack_backward", (torch.randn(6, 4), _P.out, _P.src_index, None, "weighted"),
         ValueError, "weights must be given"),
        ("window_pack_backward", (_P.out, _P.src_index, 5), ValueError, "src_index values must be in"),
        ("window_pack_backward", (_P.out, _P.src_index[0], 6), ValueError, "src_index must have shape"),
        ("window_pack_backward", (_P.out.long(), _P.src_index, 6), TypeError, "grad_out must be a floating"),
    ],
)
def test_unpack_bad_inputs_direct(op, args, exc, match):
    with pytest.raises(exc, match=match):
        getattr(torch.ops.fremure, op)(*args)


def test_fake_kernels_check_mode_and_weights():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as fake_mode:
        y, src = fake_mode.from_tensor(_P.out), fake_mode.from_tensor(_P.src_index)
        with pytest.raises(ValueError, match="weights must be given"):
            torch.ops.fremure.window_unpack(y, src, None, 6, "weighted")
        with pytest.raises(ValueError, match="mode must be one of"):
            torch.ops.fremure.window_unpack_backward(torch.empty(6, 4), y, src, None, "both")
        assert torch.ops.fremure.window_unpack(y, src, None, 6, "mean").shape == (6, 4)
