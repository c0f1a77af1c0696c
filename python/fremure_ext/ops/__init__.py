"""Public wrappers of torch.ops.fremure.* (one module per op), with their fake kernels and
autograd formulas registered on import."""

from __future__ import annotations

import importlib
import pkgutil

__all__: list[str] = []

# One module per op; each declares its public names in __all__.
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in _module.__all__:
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
