"""Pure-PyTorch implementations of every fremure op: the test oracle, the benchmark baseline and
the ``backend="reference"`` fallback. Same signatures as the public wrappers in fremure_ext.ops."""

from ..registry import MODULES, export

__all__ = export(__name__, globals(), (*MODULES, "philox"))
