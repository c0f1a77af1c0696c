"""Choice between the torch.ops.fremure kernels and the plain-PyTorch (published) computation."""

from __future__ import annotations

import fremure_ext

KERNELS = ("auto", "ops", "reference")


def check_kernels(kernels: object) -> str:
    """Validates a ``kernels`` argument ("auto" | "ops" | "reference") and returns it."""
    if not isinstance(kernels, str) or kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(map(repr, KERNELS))}, got {kernels!r}")
    return kernels


def ops_available(*names: str) -> bool:
    """True when fremure_ext exposes every named op (they land one by one)."""
    return all(hasattr(fremure_ext, name) for name in names)


def use_ops(kernels: str, *names: str) -> bool:
    """Whether a module built with ``kernels`` runs the fused ops named ``names``.

    "auto" takes the ops when all of them exist and falls back to the reference computation
    otherwise; "ops" insists on them (ImportError naming the missing ones).
    """
    if kernels == "reference":
        return False
    if kernels == "auto":
        return ops_available(*names)
    missing = [n for n in names if not hasattr(fremure_ext, n)]
    if missing:
        raise ImportError(f"kernels='ops' needs fremure_ext.{', fremure_ext.'.join(missing)}, which this build "
                          "of fremure_ext does not provide; use kernels='reference' or 'auto'")
    return True
