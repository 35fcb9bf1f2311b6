// Instruction-set detection for candlejax's native kernels (see native_common.h) and the C entry
// points that report and cap it.
#include "native_common.h"

namespace candlejax_native {

namespace {

int g_forced_isa = -1;  // -1: detect; 0 portable, 1 AVX2, 2 AVX-512 (candlejax_native_set_isa)

int DetectIsa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return 1;
  return 0;
}

}  // namespace

int ActiveIsa() {
  static const int detected = DetectIsa();
  return g_forced_isa >= 0 ? std::min(g_forced_isa, detected) : detected;
}

}  // namespace candlejax_native

extern "C" {
// 0 portable, 1 AVX2, 2 AVX-512: the path this CPU runs (after any cap)
int candlejax_native_isa() { return candlejax_native::ActiveIsa(); }
// cap the path (tests run every path the CPU has); -1 restores detection
void candlejax_native_set_isa(int isa) { candlejax_native::g_forced_isa = isa; }
}
