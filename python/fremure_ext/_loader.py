"""Loads the compiled extension once; importing it registers every torch.ops.fremure kernel.

torch is imported first: _C links against libc10 / libtorch*, which are then already loaded and
found by soname, so an installed _C needs no path into the environment it was built in. Before
_C is loaded, the torch it was built against (recorded in the generated ``_build_config``) is
compared with the running one: a C++ extension only works with the torch build it was compiled
for, and a mismatch would otherwise surface as an undefined-symbol error or a crash.
"""

from __future__ import annotations

import torch

REBUILD_HINT = (
    "Rebuild fremure against the installed torch: "
    "`pip install --no-build-isolation --force-reinstall --no-deps <fremure source or sdist>` "
    "(in a source checkout: `pip install --no-build-isolation --force-reinstall --no-deps .`, or "
    "`scripts/dev_build.sh` for an in-place build), or install the torch it was built for"
)


def _public(version: str) -> str:
    """'2.14.1+cu130' -> '2.14.1' (the local label names the CUDA flavour, compared separately)."""
    return version.split("+", 1)[0]


def running_torch() -> dict:
    """The running torch as the build config records it: ``torch_version`` (str),
    ``torch_cuda_version`` (str, "" for a CPU-only torch) and ``cxx11_abi`` (bool)."""
    return {
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda or "",
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
    }


def torch_mismatch(config, running: dict | None = None) -> str | None:
    """Why the build recorded in ``config`` (a ``_build_config`` module or any object with
    TORCH_VERSION, TORCH_CUDA_VERSION, CXX11_ABI) cannot load into the running torch, or None.

    Versions are compared up to the local label (``2.14.1+cu130`` and ``2.14.1`` agree), the CUDA
    version and the C++11 ABI exactly.
    """
    now = running or running_torch()
    built = f"torch {config.TORCH_VERSION} (CUDA {config.TORCH_CUDA_VERSION or 'none'})"
    here = f"torch {now['torch_version']} (CUDA {now['torch_cuda_version'] or 'none'})"
    reasons = []
    if _public(config.TORCH_VERSION) != _public(now["torch_version"]):
        reasons.append("versions differ")
    if (config.TORCH_CUDA_VERSION or "") != now["torch_cuda_version"]:
        reasons.append("CUDA versions differ")
    if bool(config.CXX11_ABI) != now["cxx11_abi"]:
        reasons.append(f"C++11 ABI differs (built {int(bool(config.CXX11_ABI))}, running {int(now['cxx11_abi'])})")
    if not reasons:
        return None
    return (f"fremure_ext._C was built for {built} but this interpreter runs {here}: "
            f"{', '.join(reasons)}. {REBUILD_HINT} (`pip install torch=={_public(config.TORCH_VERSION)}`).")


def _load():
    try:
        from . import _build_config
    except ImportError as exc:
        raise ImportError("fremure_ext is not built (no fremure_ext/_build_config.py next to _C). Install the package "
                          "with `pip install --no-build-isolation .` (torch must already be installed), or build it "
                          f"in place for development with `scripts/dev_build.sh`. Original error: {exc}") from exc
    problem = torch_mismatch(_build_config)
    if problem:
        raise ImportError(problem)
    try:
        from . import _C  # noqa: F401  (import side effect: TORCH_LIBRARY registration)
    except ImportError as exc:
        if "undefined symbol" in str(exc):
            # The recorded versions agree, yet the binary does not fit this torch (e.g. a nightly
            # of the same version, or torch replaced under a dev build): still a torch mismatch.
            raise ImportError(f"fremure_ext._C does not match the running torch {torch.__version__} (built for "
                              f"torch {_build_config.TORCH_VERSION}): {exc}. {REBUILD_HINT}.") from exc
        raise ImportError("fremure_ext._C could not be loaded. Reinstall with `pip install --no-build-isolation .` "
                          "(torch must already be installed) or rebuild in place with `scripts/dev_build.sh`. "
                          f"Original error: {exc}") from exc
    return _build_config, _C


build_config, _C = _load()


def build_info() -> dict:
    """What the compiled extension contains.

    Returns a dict with ``version`` (str), ``torch_version`` (str, the torch it was built
    against), ``cuda`` (bool, CUDA kernels compiled), ``cuda_archs`` (str, e.g. ``"80,90"``),
    ``openmp`` (bool, CPU kernels parallel), ``cpu_isas`` (list of str, the CPU kernel variants
    compiled), ``cpu_kernel_tables`` (dict, ISA -> kernel tables registered for it), plus from the build config ``torch_cuda_version`` (str), ``cxx11_abi`` (bool),
    ``nvcc_version`` (str) and ``native_cpu`` (bool, built with -march=native).
    """
    info = dict(_C.build_info())
    info.update(torch_cuda_version=build_config.TORCH_CUDA_VERSION, cxx11_abi=bool(build_config.CXX11_ABI),
                nvcc_version=build_config.NVCC_VERSION, native_cpu=bool(build_config.NATIVE_CPU))
    return info
