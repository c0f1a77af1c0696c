// Run-time choice of the x86 vector ISA for CPU kernels compiled several times.
//
// The extension is built for the baseline ISA (SSE2 on x86-64), where the lane loops of the head
// kernels run 4 floats wide. Their kernel bodies (cpu/*_kernels.inc) are therefore compiled once
// per ISA below, each copy inside `#pragma GCC target(...)`, and the op picks the widest copy the
// CPU supports. FREMURE_CPU_ISA=baseline|avx2|avx512 caps the choice (max_isa(), the one parser).
#pragma once
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FREMURE_X86_MULTIVERSION 1
#else
#define FREMURE_X86_MULTIVERSION 0
#endif

#include <c10/util/Exception.h>

namespace fremure {
namespace cpu {

enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest ISA this CPU supports (AVX-512 = F, VL, BW, DQ; AVX2 = AVX2 + FMA).
inline Isa supported_isa() {
#if FREMURE_X86_MULTIVERSION
  static const Isa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
      return Isa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kBaseline;
  }();
  return best;
#else
  return Isa::kBaseline;
#endif
}

// The ISA every multi-version CPU kernel runs now: the best supported, capped by
// FREMURE_CPU_ISA=baseline|avx2|avx512 (a cap above the CPU's best gives the CPU's best). The
// variable is read on every call, so tests can exercise each variant in one process.
inline Isa max_isa() {
  const Isa best = supported_isa();
  const char* cap = std::getenv("FREMURE_CPU_ISA");
  if (cap == nullptr || cap[0] == '\0') return best;
  Isa want;
  if (std::strcmp(cap, "baseline") == 0) {
    want = Isa::kBaseline;
  } else if (std::strcmp(cap, "avx2") == 0) {
    want = Isa::kAvx2;
  } else if (std::strcmp(cap, "avx512") == 0) {
    want = Isa::kAvx512;
  } else {
    TORCH_CHECK(false, "FREMURE_CPU_ISA must be 'baseline', 'avx2' or 'avx512', got '", cap, "'");
  }
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

}  // namespace cpu
}  // namespace fremure

// Calls the copy of `fn` (a name inside the isa_* namespaces of cpu/isa_variants.inc, template
// arguments allowed) for the ISA cpu_isa() picks.
#if FREMURE_X86_MULTIVERSION
#define FREMURE_ISA_CALL(fn, ...)                                                         \
  (::fremure::cpu::max_isa() == ::fremure::cpu::Isa::kAvx512 ? isa_avx512::fn(__VA_ARGS__) \
   : ::fremure::cpu::max_isa() == ::fremure::cpu::Isa::kAvx2 ? isa_avx2::fn(__VA_ARGS__)   \
                                                             : isa_default::fn(__VA_ARGS__))
#else
#define FREMURE_ISA_CALL(fn, ...) isa_default::fn(__VA_ARGS__)
#endif
