"""Loads the compiled extension once; importing it registers every torch.ops.fremure kernel."""

from __future__ import annotations

try:
    from . import _C  # noqa: F401  (import side effect: TORCH_LIBRARY registration)
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "fremure_ext._C is not built. Install the package with "
        "`pip install --no-build-isolation .` (torch must already be installed), "
        f"or build it in place for development. Original error: {exc}"
    ) from exc


def build_info() -> dict:
    """What the compiled extension contains.

    Returns a dict with ``version`` (str), ``torch_version`` (str, the torch it was built
    against), ``cuda`` (bool, CUDA kernels compiled), ``cuda_archs`` (str, e.g. ``"80;90"``)
    and ``openmp`` (bool, CPU kernels parallel).
    """
    return dict(_C.build_info())
