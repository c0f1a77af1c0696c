// Run-time choice of the x86 vector ISA for CPU kernels compiled several times.
//
// The extension is built for the baseline ISA (SSE2 on x86-64), where the lane loops of the head
// kernels run 4 floats wide. Their kernel bodies (cpu/*_kernels.inc) are therefore compiled once
// per ISA below, each copy inside `#pragma GCC target(...)`, and the op picks the widest copy the
// CPU supports. FREMURE_CPU_ISA=default|avx2|avx512 caps the choice (tests, benchmarks).
#pragma once
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FREMURE_X86_MULTIVERSION 1
#else
#define FREMURE_X86_MULTIVERSION 0
#endif

namespace fremure {

enum class CpuIsa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

inline CpuIsa cpu_isa_supported() {
#if FREMURE_X86_MULTIVERSION
  static const CpuIsa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
      return CpuIsa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
    return CpuIsa::kDefault;
  }();
  return best;
#else
  return CpuIsa::kDefault;
#endif
}

// The ISA to run now: the best supported, capped by FREMURE_CPU_ISA when set.
inline CpuIsa cpu_isa() {
  CpuIsa isa = cpu_isa_supported();
  if (const char* cap = std::getenv("FREMURE_CPU_ISA")) {
    CpuIsa want = isa;
    if (std::strcmp(cap, "default") == 0) {
      want = CpuIsa::kDefault;
    } else if (std::strcmp(cap, "avx2") == 0) {
      want = CpuIsa::kAvx2;
    } else if (std::strcmp(cap, "avx512") == 0) {
      want = CpuIsa::kAvx512;
    }
    if (static_cast<int>(want) < static_cast<int>(isa)) isa = want;
  }
  return isa;
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
