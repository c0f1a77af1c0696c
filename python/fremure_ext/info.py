"""What fremure_ext was built with and what will run on this machine.

    python -m fremure_ext.info

``report()`` returns the same text (for ``fremure info``); ``collect()`` the facts as a dict.
"""

from __future__ import annotations

import importlib.util
import os
import platform

import torch

from .dispatch import has_kernel
from .registry import OPS


def _triton_status() -> str:
    if importlib.util.find_spec("triton") is None:
        return "not installed"
    try:
        import triton

        return f"{triton.__version__} (importable)"
    except Exception as exc:  # noqa: BLE001 - any import failure is worth reporting as such
        return f"installed but not importable: {type(exc).__name__}: {exc}"


def collect() -> dict:
    """The facts ``report()`` prints: ``built`` (dict: version, torch, CUDA, archs, CPU ISA
    variants, ops) and ``here`` (dict: torch, CPU ISA selected, CUDA device, Triton)."""
    import fremure_ext
    from fremure_ext import _loader

    info = fremure_ext.build_info()
    C = _loader._C
    built = {
        "fremure_ext": info["version"],
        "torch": info["torch_version"],
        "torch CUDA": info["torch_cuda_version"] or "none (CPU-only torch)",
        "C++11 ABI": int(info["cxx11_abi"]),
        "CUDA kernels": (f"yes, nvcc {info['nvcc_version']}, archs {info['cuda_archs']}" if info["cuda"] else "no"),
        "CPU ISA variants": ", ".join(info["cpu_isas"]),
        "CPU build": "-march=native (FREMURE_NATIVE_CPU=ON, this CPU only)" if info["native_cpu"] else "portable",
        "OpenMP": info["openmp"],
        "ops with CPU kernels": ", ".join(op.name for op in OPS if has_kernel(op.name, "cpu")),
        "ops with CUDA kernels": ", ".join(op.name for op in OPS if has_kernel(op.name, "cuda")) or "none",
        "Triton kernels for": ", ".join(op.name for op in OPS if op.triton),
    }
    cap = os.environ.get("FREMURE_CPU_ISA")
    cuda_here = ", ".join(f"{i}: {torch.cuda.get_device_name(i)} "
                          f"(sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
                          for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)) or "none"
    here = {
        "python": platform.python_version(),
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        "CPU": platform.machine(),
        "CPU ISA supported": C.supported_cpu_isa(),
        "CPU ISA selected": C.selected_cpu_isa() + (f" (FREMURE_CPU_ISA={cap})" if cap else ""),
        "CPU threads": torch.get_num_threads(),
        "CUDA device": cuda_here,
        "GPU kernels": _gpu_kernels(info, cuda_here != "none"),
        "Triton": _triton_status(),
        "Triton kernels registered": ", ".join(fremure_ext.TRITON_REGISTERED) or "none",
    }
    return {"built": built, "here": here}


def _gpu_kernels(info: dict, have_gpu: bool) -> str:
    if not have_gpu:
        return "none (no CUDA device): CPU kernels only"
    if not info["cuda"]:
        return "CUDA C++ kernels not compiled (build with nvcc and FREMURE_CUDA=AUTO|ON)"
    return "CUDA C++ kernels"


def report() -> str:
    """Human-readable summary of ``collect()``: what was built, what runs here."""
    facts = collect()
    width = max(len(k) for section in facts.values() for k in section)
    lines = []
    for title, key in (("Built", "built"), ("This machine", "here")):
        lines.append(f"{title}:")
        lines.extend(f"  {k:<{width}}  {v}" for k, v in facts[key].items())
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
