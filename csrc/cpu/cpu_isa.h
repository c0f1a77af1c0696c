// Run-time choice of the x86 vector ISA for CPU kernels compiled several times.
//
// The extension is built for the baseline ISA (x86-64: SSE2) unless FREMURE_NATIVE_CPU=ON, so one
// binary runs on any x86-64 CPU. The hot loops are compiled once per ISA below (the head kernels
// through cpu/isa_variants.inc, gated_fusion and segment_attention through target attributes),
// and each op runs the widest copy the CPU supports. The environment variable
// FREMURE_CPU_ISA=baseline|avx2|avx512 caps the choice (tests, benchmarks, comparing variants); a
// cap above what the CPU supports gives the CPU's best. It is read on every call, so tests can
// switch variants inside one process.
#pragma once
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FREMURE_X86_MULTIVERSION 1
#else
#define FREMURE_X86_MULTIVERSION 0
#endif

namespace fremure {

enum class CpuIsa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

namespace cpu {

// The spelling of FREMURE_CPU_ISA for each level.
inline const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

// The widest ISA the CPU supports (AVX2 means AVX2 + FMA; AVX-512 means F, VL, BW and DQ).
inline CpuIsa supported_isa() {
#if FREMURE_X86_MULTIVERSION
  static const CpuIsa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return CpuIsa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
    return CpuIsa::kBaseline;
  }();
  return best;
#else
  return CpuIsa::kBaseline;
#endif
}

// The cap set by FREMURE_CPU_ISA (unset or empty: no cap, i.e. kAvx512). The only parser of the
// variable: every op goes through it, and an unknown value is an error rather than a silent
// default.
inline CpuIsa max_isa() {
  const char* cap = std::getenv("FREMURE_CPU_ISA");
  if (cap == nullptr || cap[0] == '\0') return CpuIsa::kAvx512;
  if (std::strcmp(cap, "baseline") == 0) return CpuIsa::kBaseline;
  if (std::strcmp(cap, "avx2") == 0) return CpuIsa::kAvx2;
  if (std::strcmp(cap, "avx512") == 0) return CpuIsa::kAvx512;
  TORCH_CHECK(false, "FREMURE_CPU_ISA must be one of baseline, avx2, avx512 (or unset), got '", cap, "'");
}

// The ISA compiled into this build's variants, widest last.
inline std::vector<std::string> compiled_isas() {
#if FREMURE_X86_MULTIVERSION
  return {"baseline", "avx2", "avx512"};
#else
  return {"baseline"};
#endif
}

}  // namespace cpu

// The ISA to run now: the best supported, capped by FREMURE_CPU_ISA.
inline CpuIsa cpu_isa() {
  const CpuIsa best = cpu::supported_isa();
  const CpuIsa cap = cpu::max_isa();
  return static_cast<int>(cap) < static_cast<int>(best) ? cap : best;
}

}  // namespace fremure

// Calls the copy of `fn` (a name inside the isa_* namespaces of cpu/isa_variants.inc, template
// arguments allowed) for the ISA cpu_isa() picks.
#if FREMURE_X86_MULTIVERSION
#define FREMURE_ISA_CALL(fn, ...)                                                  \
  (::fremure::cpu_isa() == ::fremure::CpuIsa::kAvx512 ? isa_avx512::fn(__VA_ARGS__) \
   : ::fremure::cpu_isa() == ::fremure::CpuIsa::kAvx2 ? isa_avx2::fn(__VA_ARGS__)   \
                                                      : isa_default::fn(__VA_ARGS__))
#else
#define FREMURE_ISA_CALL(fn, ...) isa_default::fn(__VA_ARGS__)
#endif
