// candlejax native kernels: y = x @ W^T for GGML 4-bit weights (Q4_0, Q4_1) kept in their file
// layout, as an XLA FFI handler for the CPU (registered from candlejax/quantized/native.py).
//
// W rows are GGML blocks of 32 values: Q4_1 = f16 d, f16 m, 16 bytes of nibbles (value j < 16 is the
// low nibble of byte j, value j + 16 its high nibble), value = d * q + m; Q4_0 = f16 d, 16 bytes,
// value = d * (q - 8). Per row and block the product is d * sum(q * x) + m * sum(x) (m = -8 d for
// Q4_0), with sum(x) per block computed once per call. Activations stay f32 (no Q8 rounding).
//
// Operands: x (M, K) f32, w (N, K / 32 * block_bytes) u8 or (L, N, ...) with layer (s32 scalar)
// choosing the matrix (a layer of a stacked model read in place, no slice copy), result (M, N) f32.
// Rows are split into chunks that the caller and XLA's intra-op thread pool work through.
// AVX-512 and AVX2 paths are chosen at run time; a portable path covers other CPUs.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kBlock = 32;

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Layout {
  int block_bytes;  // 18 (Q4_0) or 20 (Q4_1)
  int qs_offset;    // where the 16 nibble bytes start
  bool has_min;
};

inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// d and m (the block's offset) of one block
inline void BlockScales(const Layout& lay, const uint8_t* blk, float* d, float* m) {
  *d = HalfToFloat(LoadU16(blk));
  *m = lay.has_min ? HalfToFloat(LoadU16(blk + 2)) : -8.0f * *d;
}

// ------------------------------------------------------------------------------------------------
// portable path
void RowsPortable(const Layout& lay, const uint8_t* w, size_t row_bytes, const float* x, const float* xsum,
                  int64_t m_rows, int64_t k, int64_t n, int64_t r0, int64_t r1, float* y) {
  const int64_t nb = k / kBlock;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    for (int64_t i = 0; i < m_rows; ++i) {
      const float* xi = x + i * k;
      float acc = 0.0f, macc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * lay.block_bytes;
        const uint8_t* qs = blk + lay.qs_offset;
        float d, mn;
        BlockScales(lay, blk, &d, &mn);
        float t = 0.0f;
        for (int j = 0; j < 16; ++j) {
          t += static_cast<float>(qs[j] & 15) * xi[b * kBlock + j];
          t += static_cast<float>(qs[j] >> 4) * xi[b * kBlock + 16 + j];
        }
        acc += d * t;
        macc += mn * xsum[i * nb + b];
      }
      y[i * n + r] = acc + macc;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// AVX2 path
__attribute__((target("avx2,fma,f16c"))) inline float Hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma,f16c"))) void RowsAvx2(const Layout& lay, const uint8_t* w, size_t row_bytes,
                                                       const float* x, const float* xsum, int64_t m_rows,
                                                       int64_t k, int64_t n, int64_t r0, int64_t r1, float* y) {
  const int64_t nb = k / kBlock;
  const __m128i m4 = _mm_set1_epi8(15);
  int64_t r = r0;
  if (m_rows == 1) {  // decode: four rows per pass share the loads of x and overlap their chains
    for (; r + 4 <= r1; r += 4) {
      const uint8_t* rows[4] = {w + r * row_bytes, w + (r + 1) * row_bytes, w + (r + 2) * row_bytes,
                                w + (r + 3) * row_bytes};
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      float macc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int64_t b = 0; b < nb; ++b) {
        const float* xb = x + b * kBlock;
        const float xs = xsum[b];
        for (int j = 0; j < 4; ++j) {
          const uint8_t* blk = rows[j] + b * lay.block_bytes;
          const float d = _cvtsh_ss(LoadU16(blk));
          const float mn = lay.has_min ? _cvtsh_ss(LoadU16(blk + 2)) : -8.0f * d;
          const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + lay.qs_offset));
          const __m128i lo = _mm_and_si128(raw, m4);
          const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
          __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), _mm256_loadu_ps(xb));
          t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                              _mm256_loadu_ps(xb + 8), t);
          t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), _mm256_loadu_ps(xb + 16), t);
          t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
                              _mm256_loadu_ps(xb + 24), t);
          acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d), t, acc[j]);
          macc[j] += mn * xs;
        }
      }
      for (int j = 0; j < 4; ++j) y[r + j] = Hsum256(acc[j]) + macc[j];
    }
  } else {  // several activation rows: expand each block once, use it for every row of x
    std::vector<float> buf(static_cast<size_t>(32 * m_rows + 8));
    float* acc = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 31) & ~uintptr_t{31});
    std::vector<float> macc(static_cast<size_t>(m_rows));
    for (; r < r1; ++r) {
      const uint8_t* row = w + r * row_bytes;
      std::fill(acc, acc + 32 * m_rows, 0.0f);
      std::fill(macc.begin(), macc.end(), 0.0f);
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * lay.block_bytes;
        const float d = _cvtsh_ss(LoadU16(blk));
        const float mn = lay.has_min ? _cvtsh_ss(LoadU16(blk + 2)) : -8.0f * d;
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + lay.qs_offset));
        const __m128i lo = _mm_and_si128(raw, m4);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
        const __m256 ds = _mm256_set1_ps(d);
        const __m256 wv[4] = {_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), ds),
                              _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), ds),
                              _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), ds),
                              _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), ds)};
        for (int64_t i = 0; i < m_rows; ++i) {
          const float* xb = x + i * k + b * kBlock;
          float* a = acc + 32 * i;
          for (int q = 0; q < 4; ++q) {
            _mm256_store_ps(a + 8 * q, _mm256_fmadd_ps(wv[q], _mm256_loadu_ps(xb + 8 * q), _mm256_load_ps(a + 8 * q)));
          }
          macc[i] += mn * xsum[i * nb + b];
        }
      }
      for (int64_t i = 0; i < m_rows; ++i) {
        const float* a = acc + 32 * i;
        const __m256 t = _mm256_add_ps(_mm256_add_ps(_mm256_load_ps(a), _mm256_load_ps(a + 8)),
                                       _mm256_add_ps(_mm256_load_ps(a + 16), _mm256_load_ps(a + 24)));
        y[i * n + r] = Hsum256(t) + macc[i];
      }
    }
  }
  for (; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    for (int64_t i = 0; i < m_rows; ++i) {
      const float* xi = x + i * k;
      __m256 acc = _mm256_setzero_ps();
      float macc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * lay.block_bytes;
        const float d = _cvtsh_ss(LoadU16(blk));
        const float mn = lay.has_min ? _cvtsh_ss(LoadU16(blk + 2)) : -8.0f * d;
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + lay.qs_offset));
        const __m128i lo = _mm_and_si128(raw, m4);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
        const float* xb = xi + b * kBlock;
        __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), _mm256_loadu_ps(xb));
        t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                            _mm256_loadu_ps(xb + 8), t);
        t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), _mm256_loadu_ps(xb + 16), t);
        t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
                            _mm256_loadu_ps(xb + 24), t);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), t, acc);
        macc += mn * xsum[i * nb + b];
      }
      y[i * n + r] = Hsum256(acc) + macc;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// AVX-512: one weight row against G rows of x, the partial sums of all G in registers
template <int G>
__attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c"))) inline void RowGroupAvx512(
    const Layout& lay, const uint8_t* row, const float* x, const float* xsum, int64_t k, int64_t nb, float* y,
    int64_t n) {
  const __m128i m4 = _mm_set1_epi8(15);
  __m512 acc[G];
  float macc[G];
  for (int g = 0; g < G; ++g) {
    acc[g] = _mm512_setzero_ps();
    macc[g] = 0.0f;
  }
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = row + b * lay.block_bytes;
    const float d = _cvtsh_ss(LoadU16(blk));
    const float mn = lay.has_min ? _cvtsh_ss(LoadU16(blk + 2)) : -8.0f * d;
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + lay.qs_offset));
    const __m512 ds = _mm512_set1_ps(d);
    const __m512 wlo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(raw, m4))), ds);
    const __m512 whi =
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(raw, 4), m4))), ds);
    for (int g = 0; g < G; ++g) {
      const float* xb = x + g * k + b * kBlock;
      acc[g] = _mm512_fmadd_ps(wlo, _mm512_loadu_ps(xb), acc[g]);
      acc[g] = _mm512_fmadd_ps(whi, _mm512_loadu_ps(xb + 16), acc[g]);
      macc[g] += mn * xsum[g * nb + b];
    }
  }
  for (int g = 0; g < G; ++g) y[g * n] = _mm512_reduce_add_ps(acc[g]) + macc[g];
}

// ------------------------------------------------------------------------------------------------
// AVX-512 path: two rows at a time for one activation row (decode), one row otherwise
__attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c"))) void RowsAvx512(
    const Layout& lay, const uint8_t* w, size_t row_bytes, const float* x, const float* xsum, int64_t m_rows,
    int64_t k, int64_t n, int64_t r0, int64_t r1, float* y) {
  const int64_t nb = k / kBlock;
  const __m128i m4 = _mm_set1_epi8(15);
  int64_t r = r0;
  if (m_rows == 1) {  // decode: four rows per pass share the loads of x and overlap their chains
    for (; r + 4 <= r1; r += 4) {
      const uint8_t* rows[4] = {w + r * row_bytes, w + (r + 1) * row_bytes, w + (r + 2) * row_bytes,
                                w + (r + 3) * row_bytes};
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      float macc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int64_t b = 0; b < nb; ++b) {
        const __m512 x0 = _mm512_loadu_ps(x + b * kBlock);
        const __m512 x1 = _mm512_loadu_ps(x + b * kBlock + 16);
        const float xs = xsum[b];
        for (int j = 0; j < 4; ++j) {
          const uint8_t* blk = rows[j] + b * lay.block_bytes;
          const float d = _cvtsh_ss(LoadU16(blk));
          const float mn = lay.has_min ? _cvtsh_ss(LoadU16(blk + 2)) : -8.0f * d;
          const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + lay.qs_offset));
          const __m128i lo = _mm_and_si128(raw, m4);
          const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
          __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), x0);
          t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), x1, t);
          acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(d), t, acc[j]);
          macc[j] += mn * xs;
        }
      }
      for (int j = 0; j < 4; ++j) y[r + j] = _mm512_reduce_add_ps(acc[j]) + macc[j];
    }
  } else {  // several activation rows (a prompt chunk): groups of up to 8 rows of x share each expanded block
    for (; r < r1; ++r) {
      const uint8_t* row = w + r * row_bytes;
      int64_t i = 0;
      for (; i + 8 <= m_rows; i += 8) RowGroupAvx512<8>(lay, row, x + i * k, xsum + i * nb, k, nb, y + i * n + r, n);
      for (; i + 4 <= m_rows; i += 4) RowGroupAvx512<4>(lay, row, x + i * k, xsum + i * nb, k, nb, y + i * n + r, n);
      for (; i < m_rows; ++i) RowGroupAvx512<1>(lay, row, x + i * k, xsum + i * nb, k, nb, y + i * n + r, n);
    }
  }
  for (; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    for (int64_t i = 0; i < m_rows; ++i) {
      const float* xi = x + i * k;
      __m512 acc = _mm512_setzero_ps();
      float macc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * lay.block_bytes;
        const float d = _cvtsh_ss(LoadU16(blk));
        const float mn = lay.has_min ? _cvtsh_ss(LoadU16(blk + 2)) : -8.0f * d;
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + lay.qs_offset));
        const __m128i lo = _mm_and_si128(raw, m4);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
        const float* xb = xi + b * kBlock;
        __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), _mm512_loadu_ps(xb));
        t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), _mm512_loadu_ps(xb + 16), t);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), t, acc);
        macc += mn * xsum[i * nb + b];
      }
      y[i * n + r] = _mm512_reduce_add_ps(acc) + macc;
    }
  }
}

using RowsFn = void (*)(const Layout&, const uint8_t*, size_t, const float*, const float*, int64_t, int64_t,
                        int64_t, int64_t, int64_t, float*);

int g_forced_isa = -1;  // -1: detect; 0 portable, 1 AVX2, 2 AVX-512 (set by SetIsa for tests)

int DetectIsa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return 1;
  return 0;
}

int ActiveIsa() {
  static const int detected = DetectIsa();
  return g_forced_isa >= 0 ? std::min(g_forced_isa, detected) : detected;
}

RowsFn Pick() {
  switch (ActiveIsa()) {
    case 2:
      return RowsAvx512;
    case 1:
      return RowsAvx2;
    default:
      return RowsPortable;
  }
}

struct Shared {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

ffi::Error Q4Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w, ffi::Buffer<ffi::S32> layer,
                    ffi::ResultBuffer<ffi::F32> out, int32_t kind) {
  Layout lay;
  if (kind == 2) {
    lay = {18, 2, false};
  } else if (kind == 3) {
    lay = {20, 4, true};
  } else {
    return ffi::Error::InvalidArgument("candlejax q4_matmul: kind must be 2 (Q4_0) or 3 (Q4_1), got " +
                                       std::to_string(kind));
  }
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || (wd.size() != 2 && wd.size() != 3) || w.element_type() != ffi::U8) {
    return ffi::Error::InvalidArgument("candlejax q4_matmul: x must be (M, K) f32 and w (N, B) or (L, N, B) u8");
  }
  const int64_t m_rows = xd[0], k = xd[1];
  const int64_t n = wd[wd.size() - 2], row_bytes = wd[wd.size() - 1];
  if (k % kBlock != 0 || row_bytes != k / kBlock * lay.block_bytes) {
    return ffi::Error::InvalidArgument("candlejax q4_matmul: x's last dim " + std::to_string(k) +
                                       " does not match the weight's row of " + std::to_string(row_bytes) +
                                       " bytes");
  }
  const auto od = out->dimensions();
  if (od.size() != 2 || od[0] != m_rows || od[1] != n) {
    return ffi::Error::InvalidArgument("candlejax q4_matmul: result must be (M, N)");
  }
  const uint8_t* wp = static_cast<const uint8_t*>(w.untyped_data());
  if (wd.size() == 3) {
    const int32_t l = *layer.typed_data();
    if (l < 0 || l >= wd[0]) {
      return ffi::Error::InvalidArgument("candlejax q4_matmul: layer " + std::to_string(l) + " out of range [0, " +
                                         std::to_string(wd[0]) + ")");
    }
    wp += static_cast<size_t>(l) * n * row_bytes;
  }
  const float* xp = x.typed_data();
  float* yp = out->typed_data();
  const int64_t nb = k / kBlock;
  std::vector<float> xsum(static_cast<size_t>(m_rows * nb));
  for (int64_t i = 0; i < m_rows; ++i) {
    for (int64_t b = 0; b < nb; ++b) {
      float s = 0.0f;
      for (int j = 0; j < kBlock; ++j) s += xp[i * k + b * kBlock + j];
      xsum[i * nb + b] = s;
    }
  }
  const RowsFn rows = Pick();
  const int64_t work = n * k * std::max<int64_t>(m_rows, 1);
  static const int64_t max_threads = [] {
    const char* v = std::getenv("CANDLEJAX_NATIVE_THREADS");
    return v ? std::atoll(v) : int64_t{-1};
  }();
  int64_t threads = pool.num_threads();
  if (max_threads >= 0) threads = std::min(threads, max_threads - 1);
  if (threads <= 0 || work < (int64_t{1} << 17) || n < 64) {
    rows(lay, wp, row_bytes, xp, xsum.data(), m_rows, k, n, 0, n, yp);
    return ffi::Error::Success();
  }
  // chunks of rows, claimed by the caller and the pool's workers from one counter; the caller
  // waits only for chunks already claimed (running), so a busy pool never blocks it
  const int64_t chunks = std::min<int64_t>((threads + 1) * 4, n / 16);
  const int64_t per = (n + chunks - 1) / chunks;
  auto shared = std::make_shared<Shared>();
  const float* xs = xsum.data();
  auto work_fn = [=](Shared* s) {
    for (;;) {
      const int64_t c = s->next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      const int64_t r0 = c * per, r1 = std::min(n, r0 + per);
      if (r0 < r1) rows(lay, wp, row_bytes, xp, xs, m_rows, k, n, r0, r1, yp);
      s->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(threads, chunks - 1);
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([shared, work_fn]() { work_fn(shared.get()); });
  }
  work_fn(shared.get());
  // a claimed chunk is being computed; yield the core after a short spin (a loaded machine may
  // have descheduled the worker that holds it)
  for (int spins = 0; shared->done.load(std::memory_order_acquire) < chunks; ++spins) {
    if (spins < 2000) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CandlejaxQ4Matmul, Q4Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("kind"));

extern "C" {
// 0 portable, 1 AVX2, 2 AVX-512: the path this CPU runs (after any override)
int candlejax_native_isa() { return ActiveIsa(); }
// cap the path (tests run every path the CPU has); -1 restores detection
void candlejax_native_set_isa(int isa) { g_forced_isa = isa; }
}
