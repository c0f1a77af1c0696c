// The pybind11 module fremure_ext._C: loading it registers every op; build_info() says what
// was compiled into it, selected_cpu_isa() / supported_cpu_isa() what the CPU kernels run here.
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
  info["cpu_isas"] = fremure::cpu::compiled_isas();
  pybind11::dict tables;
  for (int level = 0; level < 3; ++level) {
    tables[fremure::cpu::isa_name(static_cast<fremure::CpuIsa>(level))] = fremure::cpu::registered_kernels[level];
  }
  info["cpu_kernel_tables"] = tables;
  return info;
}

std::string selected_cpu_isa() { return fremure::cpu::isa_name(fremure::cpu_isa()); }

std::string supported_cpu_isa() { return fremure::cpu::isa_name(fremure::cpu::supported_isa()); }

}  // namespace

PYBIND11_MODULE(_C, module) {
  module.doc() = "Compiled kernels of torch.ops.fremure";
  module.def("build_info", &build_info,
             "dict: version, torch_version, cuda (bool), cuda_archs (str), openmp (bool), "
             "cpu_isas (list of str: the CPU kernel variants compiled, e.g. baseline, avx2, avx512), "
             "cpu_kernel_tables (dict: ISA -> kernel tables registered for it)");
  module.def("selected_cpu_isa", &selected_cpu_isa,
             "str: the CPU kernel variant the ops run now (baseline, avx2 or avx512): the best this CPU "
             "supports, capped by FREMURE_CPU_ISA; raises if FREMURE_CPU_ISA is not one of those");
  module.def("supported_cpu_isa", &supported_cpu_isa,
             "str: the widest CPU kernel variant this CPU supports (baseline, avx2 or avx512)");
}
