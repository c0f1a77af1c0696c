"""window_pack / window_unpack: sliding windows over frame-sorted rows (docs/method.md 3.1, 3.5).

A video's N relation rows ``x [N, D]`` are sorted by frame; ``frame_offsets [b + 1]`` (int64, CSR)
says frame f owns rows ``frame_offsets[f] .. frame_offsets[f + 1] - 1`` (a frame may own none).
Window w covers frames ``[w * stride, w * stride + window)`` while that fits in the video; if the
last of those ends before frame b, one more window ``[b - window, b)`` is added so that every frame
is covered. A video with fewer than ``window`` frames has no window at all (the published global
branch gives a one-frame video an all-zero output).

``window=1, stride=1, padded=True`` is the published frame packing (``[b, l, D]`` batch-first,
padding mask ``src_index < 0``); ``window=2, stride=1, padded=True`` is the published global input
of the temporal decoder (batch-first), ``position`` selecting the row of the position embedding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import reference as _reference
from ..dispatch import compiled
from ._common import check_float, check_like, check_number, check_shape, check_tensor

__all__ = ["WindowPack", "window_count", "window_pack", "window_unpack", "UNPACK_MODES"]

UNPACK_MODES = ("latter", "mean", "weighted", "sum")
_INT = (int, torch.SymInt)


class WindowPack(NamedTuple):
    """Result of :func:`window_pack` (see there for shapes)."""

    out: torch.Tensor
    src_index: torch.Tensor
    position: torch.Tensor
    window_offsets: torch.Tensor


def window_count(num_frames: int, window: int, stride: int) -> int:
    """Number of windows :func:`window_pack` makes over ``num_frames`` frames (0 if fewer than
    ``window`` frames; the rule: :func:`fremure_ext.reference.window.window_count`)."""
    check_number(window, "window", _INT)
    check_number(stride, "stride", _INT)
    _check_window_stride(window, stride)
    return _reference.window.window_count(num_frames, window, stride)


# Padded windows have window * (rows of the largest frame) slots, an int64 product: a window of
# more frames than any video has (2**31) would only overflow it.
MAX_WINDOW = 2 ** 31 - 1


def _check_window_stride(window, stride) -> None:
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if window > MAX_WINDOW:
        raise ValueError(f"window must be <= {MAX_WINDOW} (2**31 - 1), got {window}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")


def window_pack(x: torch.Tensor, frame_offsets: torch.Tensor, window: int, stride: int = 1,
                padded: bool = False) -> WindowPack:
    """Gather the rows of every sliding window of frames.

    Args:
        x: ``[N, D]`` float tensor (float32/float64/float16/bfloat16), rows sorted by frame.
        frame_offsets: int64 ``[b + 1]`` on x's device: ``0 = o[0] <= o[1] <= ... <= o[b] = N``.
        window: frames per window (>= 1).
        stride: frames between the starts of consecutive windows (>= 1; > window leaves gaps).
        padded: False for the packed layout (no padding rows), True for the published zero-padded
            batch-first layout.

    Returns:
        :class:`WindowPack` ``(out, src_index, position, window_offsets)``; inside a window the rows
        of its frames in frame (= original) order; ``n_win = window_count(b, window, stride)``.

        - packed: ``out [M, D] = x[src_index]``, ``src_index [M]`` int64 source rows,
          ``position [M]`` int64 frame index within the window (0..window-1).
        - padded: ``L = window * l`` with ``l`` the most rows in one frame; ``out [n_win, L, D]``
          (each window's rows first, then zero rows), ``src_index`` and ``position [n_win, L]``
          with -1 on padding (padding mask = ``src_index < 0``).
        - ``window_offsets [n_win + 1]`` int64: CSR of the real rows of each window.

        Differentiable in ``x`` (the index outputs are not differentiable).
    """
    check_float(x, "x")
    check_tensor(frame_offsets, "frame_offsets")
    check_number(window, "window", _INT)
    check_number(stride, "stride", _INT)
    if not isinstance(padded, bool):
        raise TypeError(f"padded must be a bool, got {type(padded).__name__}")
    _check_window_stride(window, stride)
    if not compiled("window_pack", x.device):
        check_window_pack(x, frame_offsets, window, stride)
        return WindowPack(*_reference.window_pack(x, frame_offsets, window, stride, padded))
    return WindowPack(*torch.ops.fremure.window_pack(x, frame_offsets, window, stride, padded))


def window_unpack(y: torch.Tensor, src_index: torch.Tensor, weights: torch.Tensor | None, num_rows: int,
                  mode: str = "latter") -> torch.Tensor:
    """Scatter packed window rows back onto the source rows, combining the copies of a row.

    Args:
        y: ``[M, D]`` (packed) or ``[n_win, L, D]`` (padded) float tensor, e.g. the windows after
            attention.
        src_index: int64, y's shape without D: the source row of each packed row, -1 for padding
            (as returned by :func:`window_pack`); values in ``[-1, num_rows)``.
        weights: float, src_index's shape, y's dtype, >= 0; required in mode
            ``"weighted"`` and ignored otherwise.
        num_rows: number of source rows N.
        mode: ``"latter"``: each row takes the copy of the FIRST packed row (earliest window) that
            holds it (window 2 / stride 1: the published "latter" scatter); ``"mean"``: average of
            all copies (window 2: the published "both"); ``"weighted"``:
            ``sum(w * y) / sum(w)`` over the copies (0 when the weights sum to 0); ``"sum"``.

    Returns:
        ``[num_rows, D]``; rows no window holds are 0. Differentiable in ``y`` and ``weights``.
    """
    check_float(y, "y")
    check_tensor(src_index, "src_index")
    check_number(num_rows, "num_rows", _INT)
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, got {type(mode).__name__}")
    if mode != "weighted":
        weights = None
    elif weights is not None:
        check_float(weights, "weights")
    if not compiled("window_unpack", y.device):
        check_window_unpack(y, src_index, weights, num_rows, mode)
        return _reference.window_unpack(y, src_index, weights, num_rows, mode)
    return torch.ops.fremure.window_unpack(y, src_index, weights, num_rows, mode)


# ---------------------------------------------------------------------------------------------
# What the C++ kernels check, for the paths without one: the fake kernels and the reference fallback
# (device, dtype, shape and argument values; the values of offsets, indices and weights are read by
# the kernels alone).


def check_window_pack(x, frame_offsets, window, stride) -> None:
    check_float(x, "x")
    check_shape(x.dim() == 2, "x", "[N, D] (2 dimensions)", x)
    _check_window_stride(window, stride)
    check_like(x, "x", frame_offsets, "frame_offsets", dtype=False)
    if frame_offsets.dtype != torch.int64:
        raise TypeError(f"frame_offsets must be an int64 tensor, got {frame_offsets.dtype}")
    check_shape(frame_offsets.dim() == 1 and frame_offsets.shape[0] >= 1, "frame_offsets",
                "a 1-D tensor [num_frames + 1]", frame_offsets)


def _check_packed(y, src_index, num_rows, y_name: str) -> None:
    """y [M, D] or [n_win, L, D]; src_index int64 of y's shape without D; num_rows >= 0."""
    check_float(y, y_name)
    check_shape(y.dim() in (2, 3), y_name, "[M, D] or [n_win, L, D] (2 or 3 dimensions)", y)
    check_like(y, y_name, src_index, "src_index", dtype=False)
    if src_index.dtype != torch.int64:
        raise TypeError(f"src_index must be an int64 tensor, got {src_index.dtype}")
    check_shape(src_index.shape == y.shape[:-1], "src_index",
                f"{tuple(y.shape[:-1])} ({y_name} without its last dimension)", src_index)
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")


def _check_mode(y, src_index, weights, mode) -> None:
    if mode not in UNPACK_MODES:
        raise ValueError(f"mode must be one of {', '.join(repr(m) for m in UNPACK_MODES)}, got {mode!r}")
    if mode == "weighted":
        if weights is None:
            raise ValueError("weights must be given in mode 'weighted'")
        check_like(y, "y", weights, "weights")
        check_shape(weights.shape == src_index.shape, "weights", f"the shape of src_index {tuple(src_index.shape)}",
                    weights)


def check_window_unpack(y, src_index, weights, num_rows, mode) -> None:
    _check_packed(y, src_index, num_rows, "y")
    _check_mode(y, src_index, weights, mode)


def check_window_unpack_backward(grad_out, y, src_index, weights, mode) -> None:
    check_shape(grad_out.dim() == 2, "grad_out", "[num_rows, D] (2 dimensions)", grad_out)
    _check_packed(y, src_index, grad_out.shape[0], "y")
    check_like(y, "y", grad_out, "grad_out")
    check_shape(grad_out.shape[1] == y.shape[-1], "grad_out", f"[num_rows, {y.shape[-1]}]", grad_out)
    _check_mode(y, src_index, weights, mode)


# ---------------------------------------------------------------------------------------------
# Fake kernels. window_pack's row count (M, or L = window * l) depends on the data. n_win depends
# only on b = frame_offsets.shape[0] - 1, window and stride: it is exact when b is a plain int, but
# b is usually data-dependent under torch.compile (the model derives it from im_idx), and counting
# windows would then compare an unbacked size with window; n_win is a fresh unbacked size instead,
# so one graph serves videos shorter than the window (no windows) as well as longer ones.


@torch.library.register_fake("fremure::window_pack")
def _pack_fake(x, frame_offsets, window, stride, padded):
    check_window_pack(x, frame_offsets, window, stride)
    ctx = torch.library.get_ctx()
    num_frames = frame_offsets.shape[0] - 1
    if isinstance(num_frames, int):
        n_offsets = _reference.window.window_count(num_frames, window, stride) + 1
    else:
        # The fresh size must be an output dimension as it is (not n + 1) for the tracer to bind it.
        n_offsets = ctx.new_dynamic_size(min=1)
    n_win = n_offsets - 1
    dim = x.shape[1]
    if padded:
        slots = window * ctx.new_dynamic_size()
        shape = (n_win, slots)
    else:
        shape = (ctx.new_dynamic_size(),)
    out = x.new_empty((*shape, dim))
    src_index = frame_offsets.new_empty(shape)
    position = frame_offsets.new_empty(shape)
    window_offsets = frame_offsets.new_empty((n_offsets,))
    return out, src_index, position, window_offsets


@torch.library.register_fake("fremure::window_pack_backward")
def _pack_backward_fake(grad_out, src_index, num_rows):
    _check_packed(grad_out, src_index, num_rows, "grad_out")
    return grad_out.new_empty((num_rows, grad_out.shape[-1]))


@torch.library.register_fake("fremure::window_unpack")
def _unpack_fake(y, src_index, weights, num_rows, mode):
    check_window_unpack(y, src_index, weights, num_rows, mode)
    return y.new_empty((num_rows, y.shape[-1]))


@torch.library.register_fake("fremure::window_unpack_backward")
def _unpack_backward_fake(grad_out, y, src_index, weights, mode):
    check_window_unpack_backward(grad_out, y, src_index, weights, mode)
    grad_y = grad_out.new_empty(y.shape)
    grad_w = grad_out.new_empty(weights.shape) if mode == "weighted" else grad_out.new_empty((0,))
    return grad_y, grad_w


# ---------------------------------------------------------------------------------------------
# Autograd. Non-weighted unpack modes need only y's shape in backward, so y itself is not kept
# alive: the backward op gets a zero-stride stand-in of that shape.


def _shape_standin(like: torch.Tensor, shape) -> torch.Tensor:
    return like.new_zeros(()).expand(shape)


def _pack_setup(ctx, inputs, output):
    x = inputs[0]
    _, src_index, position, window_offsets = output
    ctx.mark_non_differentiable(src_index, position, window_offsets)
    ctx.save_for_backward(src_index)
    ctx.num_rows = x.shape[0]


def _pack_backward(ctx, grad_out, _grad_src, _grad_position, _grad_offsets):
    (src_index,) = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.fremure.window_pack_backward(grad_out.contiguous(), src_index, ctx.num_rows)
    return grad_x, None, None, None, None


torch.library.register_autograd("fremure::window_pack", _pack_backward, setup_context=_pack_setup)


def _pack_backward_setup(ctx, inputs, output):
    grad_out, src_index, _ = inputs
    ctx.save_for_backward(src_index)
    ctx.packed_shape = grad_out.shape


def _pack_backward_backward(ctx, grad_grad_x):
    # window_pack_backward is window_unpack(mode="sum"); its derivative is the gather of window_pack.
    (src_index,) = ctx.saved_tensors
    grad_grad_out = None
    if ctx.needs_input_grad[0]:
        standin = _shape_standin(grad_grad_x, ctx.packed_shape)
        grad_grad_out, _ = torch.ops.fremure.window_unpack_backward(grad_grad_x.contiguous(), standin, src_index,
                                                                    None, "sum")
    return grad_grad_out, None, None


torch.library.register_autograd("fremure::window_pack_backward", _pack_backward_backward,
                                setup_context=_pack_backward_setup)


def _unpack_setup(ctx, inputs, output):
    y, src_index, weights, num_rows, mode = inputs
    ctx.mode = mode
    ctx.y_shape = y.shape
    if mode == "weighted":
        ctx.save_for_backward(y, src_index, weights)
    else:
        ctx.save_for_backward(src_index)


def _unpack_backward(ctx, grad_out):
    if ctx.mode == "weighted":
        y, src_index, weights = ctx.saved_tensors
    else:
        (src_index,) = ctx.saved_tensors
        y, weights = _shape_standin(grad_out, ctx.y_shape), None
    grad_y, grad_w = torch.ops.fremure.window_unpack_backward(grad_out.contiguous(), y, src_index, weights, ctx.mode)
    needs = ctx.needs_input_grad
    return grad_y if needs[0] else None, None, grad_w if ctx.mode == "weighted" and needs[2] else None, None, None


torch.library.register_autograd("fremure::window_unpack", _unpack_backward, setup_context=_unpack_setup)


def _unpack_backward_setup(ctx, inputs, output):
    grad_out, y, src_index, weights, mode = inputs
    ctx.mode = mode
    ctx.num_rows = grad_out.shape[0]
    ctx.save_for_backward(src_index)


def _unpack_backward_backward(ctx, grad_grad_y, _grad_grad_w):
    # Outside mode "weighted", grad_y = A^T grad_out with out = A y linear: the derivative of
    # grad_y in grad_out is A itself, i.e. window_unpack again. The weighted mode is bilinear in
    # (grad_out, y, weights); its second derivative is not implemented.
    if ctx.mode == "weighted":
        raise NotImplementedError("fremure: double backward of window_unpack in mode 'weighted' is not implemented")
    (src_index,) = ctx.saved_tensors
    grad_grad_out = None
    if ctx.needs_input_grad[0]:
        grad_grad_out = torch.ops.fremure.window_unpack(grad_grad_y.contiguous(), src_index, None, ctx.num_rows,
                                                        ctx.mode)
    return grad_grad_out, None, None, None, None


torch.library.register_autograd("fremure::window_unpack_backward", _unpack_backward_backward,
                                setup_context=_unpack_backward_setup)
