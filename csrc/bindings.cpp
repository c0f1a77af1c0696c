// The pybind11 module fremure_ext._C: loading it registers every op; build_info() says what
// was compiled into it.
#include <torch/extension.h>

#include "cpu/cpu_isa.h"

#ifndef FREMURE_VERSION
#define FREMURE_VERSION "0.0.0+dev"
#endif
#ifndef FREMURE_CUDA_ARCHS
#define FREMURE_CUDA_ARCHS ""
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = FREMURE_VERSION;
  info["torch_version"] = FREMURE_TORCH_VERSION;
#ifdef FREMURE_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = FREMURE_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_archs"] = "";
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, module) {
  module.doc() = "Compiled kernels of torch.ops.fremure";
  module.def("build_info", &build_info,
             "dict: version, torch_version, cuda (bool), cuda_archs (str), openmp (bool)");
  module.def(
      "selected_cpu_isa", [] { return std::string(fremure::cpu::isa_name(fremure::cpu::max_isa())); },
      "str: the ISA the multi-version CPU kernels run now ('baseline' | 'avx2' | 'avx512'): the CPU's best, "
      "capped by FREMURE_CPU_ISA");
}
