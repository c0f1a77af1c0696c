// Run-time choice of the x86 vector ISA for the CPU kernels, and the one mechanism that compiles
// them once per ISA (ATen's DispatchStub idea).
//
// The extension is built for the baseline ISA (x86-64: SSE2) unless FREMURE_NATIVE_CPU=ON, so one
// binary runs on any x86-64 CPU. CMake compiles every CPU source that has vectorised kernels once
// per ISA level, defining FREMURE_CPU_CAPABILITY = 0 (baseline), 1 (AVX2+FMA) or 2 (AVX-512;
// only with GCC on x86-64, where it also defines FREMURE_MULTI_ISA). Such a source puts its kernels
// between FREMURE_ISA_KERNELS_BEGIN and FREMURE_ISA_KERNELS_END (an anonymous namespace compiled for
// the level's ISA), fills its op's DispatchStub with FREMURE_REGISTER_KERNELS, and keeps the op itself
// (checks, allocation, TORCH_LIBRARY_IMPL) under `#if FREMURE_CPU_BASELINE`, compiled once. Each
// call runs the widest registered copy that cpu_isa() allows.
//
// The environment variable FREMURE_CPU_ISA=baseline|avx2|avx512 caps the choice (tests, benchmarks,
// comparing variants); a cap above what the CPU supports gives the CPU's best. It is read on every
// call, so tests can switch variants inside one process.
#pragma once
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifndef FREMURE_CPU_CAPABILITY
#define FREMURE_CPU_CAPABILITY 0
#endif
#define FREMURE_CPU_BASELINE (FREMURE_CPU_CAPABILITY == 0)
#if defined(FREMURE_MULTI_ISA) && defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
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
#if defined(__GNUC__) && defined(__x86_64__)
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

// Kernel tables registered per ISA level (FREMURE_REGISTER_KERNELS counts them at load time).
inline int registered_kernels[3] = {0, 0, 0};

// The ISA levels this build registered kernels for, widest last.
inline std::vector<std::string> compiled_isas() {
  std::vector<std::string> names;
  for (int level = 0; level < 3; ++level) {
    if (registered_kernels[level] > 0) names.emplace_back(isa_name(static_cast<CpuIsa>(level)));
  }
  return names;
}

}  // namespace cpu

// The ISA to run now: the best supported, capped by FREMURE_CPU_ISA and by what was compiled.
inline CpuIsa cpu_isa() {
  const CpuIsa cap = cpu::max_isa();
#if FREMURE_X86_MULTIVERSION
  const CpuIsa best = cpu::supported_isa();
  return static_cast<int>(cap) < static_cast<int>(best) ? cap : best;
#else
  (void)cap;
  return CpuIsa::kBaseline;
#endif
}

// One op's table of kernels (a function pointer or a struct of them), one entry per ISA level,
// filled at load time by the copies of the op's source. Declare it `inline` at namespace scope
// outside the kernel region, so the copies share it.
template <typename Kernels>
struct DispatchStub {
  const Kernels* variants[3] = {nullptr, nullptr, nullptr};

  // The widest registered copy that cpu_isa() allows (the baseline one is always there).
  const Kernels& operator()() const {
    for (int level = static_cast<int>(cpu_isa()); level > 0; --level) {
      if (variants[level] != nullptr) return *variants[level];
    }
    return *variants[0];
  }
};

}  // namespace fremure

// The level's target ISA for the kernel region. Headers included before the region (torch, the
// standard library, our per-element math) stay baseline, so no inline function of theirs is
// emitted with wider instructions and picked by the linker for baseline callers; the
// always-inline helpers among them are vectorised for the ISA where they are inlined. (GCC 12
// warns falsely about the undefined-vector idiom inside its own AVX-512 intrinsic headers.)
// A file that defines FREMURE_ISA_WIDE_VECTORS before including this header asks GCC for 512-bit
// vectors at the AVX-512 level (the relation-head lane loops, measured faster); elsewhere GCC's
// default preference stays (segment_attention's short dot products measured faster with it).
#if FREMURE_CPU_CAPABILITY == 2 && defined(FREMURE_ISA_WIDE_VECTORS)
#define FREMURE_ISA_TARGET \
  _Pragma("GCC target(\"avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2,prefer-vector-width=512\")")
#elif FREMURE_CPU_CAPABILITY == 2
#define FREMURE_ISA_TARGET _Pragma("GCC target(\"avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2\")")
#elif FREMURE_CPU_CAPABILITY == 1
#define FREMURE_ISA_TARGET _Pragma("GCC target(\"avx2,fma,bmi2\")")
#else
#define FREMURE_ISA_TARGET
#endif
#define FREMURE_ISA_KERNELS_BEGIN                                                                   \
  _Pragma("GCC push_options") FREMURE_ISA_TARGET _Pragma("GCC diagnostic push")                   \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") namespace {
#define FREMURE_ISA_KERNELS_END \
  }                             \
  _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")

// Inside the kernel region: stores `kernels` (a static object of the stub's type) as this
// level's entry of `stub`.
#define FREMURE_REGISTER_KERNELS(stub, kernels)                                   \
  const bool FREMURE_CONCAT(registered_, __LINE__) =                              \
      ((stub).variants[FREMURE_CPU_CAPABILITY] = &(kernels),                      \
       ++::fremure::cpu::registered_kernels[FREMURE_CPU_CAPABILITY], true)
#define FREMURE_CONCAT_(a, b) a##b
#define FREMURE_CONCAT(a, b) FREMURE_CONCAT_(a, b)
