"""Public wrappers of torch.ops.fremure.* (one module per op of fremure_ext.registry), with their
fake kernels and autograd formulas registered on import."""

from ..registry import export

__all__ = export(__name__, globals())
