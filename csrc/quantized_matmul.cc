// candlejax native kernels: y = x @ W^T for GGML block-quantised weights kept in their file layout
// (Q4_0, Q4_1, Q8_0), as an XLA FFI handler for the CPU (registered by candlejax/quantized/native.py),
//
// W rows are GGML blocks of 32 values. Q4_1: f16 d, f16 m, 16 bytes of nibbles (value j < 16 is the
// low nibble of byte j, value j + 16 its high nibble), value = d * q + m. Q4_0: f16 d, 16 bytes,
// value = d * (q - 8). Q8_0: f16 d, 32 int8, value = d * q. Per row and block the product is
// d * sum(q * x) + m * sum(x) (m = -8 d for Q4_0, none for Q8_0), with sum(x) per block computed once
// per call. Activations stay f32 (no Q8 rounding of x).
//
// Operands: x (M, K) f32, w (N, K / 32 * block_bytes) u8 or (L, N, ...) with layer (s32 scalar)
// choosing the matrix (a layer of a stacked model, read in place), result (M, N) f32. Rows are
// split into chunks that the caller and XLA's intra-op thread pool work through. AVX-512 and AVX2
// paths are chosen at run time; a portable path covers other CPUs.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "native_common.h"

namespace ffi = xla::ffi;

namespace {

using candlejax_native::ActiveIsa;
using candlejax_native::ParallelRows;
using candlejax_native::RowPrefetch;

constexpr int kBlock = 32;
constexpr int kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8;  // GgmlDType ids

template <int K>
struct Fmt;
template <>
struct Fmt<kQ4_0> {
  static constexpr int kBytes = 18, kQs = 2;
  static constexpr bool kMin = false, kEight = false;
};
template <>
struct Fmt<kQ4_1> {
  static constexpr int kBytes = 20, kQs = 4;
  static constexpr bool kMin = true, kEight = false;
};
template <>
struct Fmt<kQ8_0> {
  static constexpr int kBytes = 34, kQs = 2;
  static constexpr bool kMin = false, kEight = true;
};

inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

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

// the block's offset term: m for Q4_1, -8 d for Q4_0, none (0) for Q8_0
template <int K>
inline float Offset(const uint8_t* blk, float d, float (*half)(uint16_t)) {
  if constexpr (Fmt<K>::kMin) return half(LoadU16(blk + 2));
  if constexpr (Fmt<K>::kEight) return 0.0f;
  return -8.0f * d;
}

using RowsFn = void (*)(const uint8_t*, size_t, const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                        int64_t, float*);

// ------------------------------------------------------------------------------------------------
// portable path
template <int K>
inline int Value(const uint8_t* qs, int j) {
  if constexpr (Fmt<K>::kEight) return static_cast<int8_t>(qs[j]);
  return j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
}

template <int K>
void RowsPortable(const uint8_t* w, size_t row_bytes, const float* x, const float* xsum, int64_t m_rows, int64_t k,
                  int64_t n, int64_t r0, int64_t r1, float* y) {
  const int64_t nb = k / kBlock;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    for (int64_t i = 0; i < m_rows; ++i) {
      const float* xi = x + i * k;
      float acc = 0.0f, macc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * Fmt<K>::kBytes;
        const float d = HalfToFloat(LoadU16(blk));
        float t = 0.0f;
        for (int j = 0; j < kBlock; ++j) t += static_cast<float>(Value<K>(blk + Fmt<K>::kQs, j)) * xi[b * kBlock + j];
        acc += d * t;
        macc += Offset<K>(blk, d, HalfToFloat) * xsum[i * nb + b];
      }
      y[i * n + r] = acc + macc;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// AVX2 path (8 lanes): a block expands to four vectors of 8 values

CJ_AVX2 inline float Half2(uint16_t h) { return _cvtsh_ss(h); }

CJ_AVX2 inline float Hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int K>
CJ_AVX2 inline void Expand256(const uint8_t* blk, __m256 q[4]) {
  const uint8_t* qs = blk + Fmt<K>::kQs;
  if constexpr (Fmt<K>::kEight) {
    for (int g = 0; g < 4; ++g) {
      q[g] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8 * g))));
    }
  } else {
    const __m128i m4 = _mm_set1_epi8(15);
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m128i lo = _mm_and_si128(raw, m4);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
  }
}

// A Q4 block's 16 bytes zero-extended straight from memory, 8 bytes at a time: each 32-bit lane
// holds one byte, whose low nibble is value j and high nibble value j + 16 (no byte shuffles).
template <int K>
CJ_AVX2 inline void ExpandFromMemory256(const uint8_t* blk, __m256 q[4]) {
  const uint8_t* qs = blk + Fmt<K>::kQs;
  if constexpr (Fmt<K>::kEight) {
    Expand256<K>(blk, q);
  } else {
    const __m256i m4 = _mm256_set1_epi32(15);
    const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs)));
    const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8)));
    q[0] = _mm256_cvtepi32_ps(_mm256_and_si256(b0, m4));
    q[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b1, m4));
    q[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4));
    q[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4));
  }
}

// One activation row (a decode step) against rows [r, r + 4): the four rows' block headers (f16 d
// and, for Q4_1, m) convert together, eight halves in one instruction, and their offset terms
// accumulate as one vector; each row's d is a lane permute.
template <int K>
CJ_AVX2 inline void FourRowsAvx2(const uint8_t* row0, size_t row_bytes, const float* x, const float* xsum,
                                 int64_t nb, float* y) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  __m256 offsets = _mm256_setzero_ps();  // lanes 2j, 2j + 1: row j's sums of d * sum(x) and m * sum(x)
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kBlock;
    const __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
    const __m256 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
    const uint8_t* blk = row0 + b * Fmt<K>::kBytes;
    int32_t head[4];  // each row's first four bytes: d and m (Q4_1), or d and two bytes not used
    for (int j = 0; j < 4; ++j) std::memcpy(&head[j], blk + j * row_bytes, 4);
    const __m256 dm = _mm256_cvtph_ps(_mm_setr_epi32(head[0], head[1], head[2], head[3]));
    if constexpr (!Fmt<K>::kEight) offsets = _mm256_fmadd_ps(dm, _mm256_set1_ps(xsum[b]), offsets);
    for (int j = 0; j < 4; ++j) {
      __m256 q[4];
      ExpandFromMemory256<K>(blk + j * row_bytes, q);
      __m256 t = _mm256_mul_ps(q[0], x0);
      t = _mm256_fmadd_ps(q[1], x1, t);
      t = _mm256_fmadd_ps(q[2], x2, t);
      t = _mm256_fmadd_ps(q[3], x3, t);
      acc[j] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(dm, _mm256_set1_epi32(2 * j)), t, acc[j]);
    }
  }
  alignas(32) float off[8];
  _mm256_store_ps(off, offsets);
  for (int j = 0; j < 4; ++j) {
    float o = 0.0f;  // Q8_0
    if constexpr (Fmt<K>::kMin) {
      o = off[2 * j + 1];
    } else if constexpr (!Fmt<K>::kEight) {
      o = -8.0f * off[2 * j];  // Q4_0: m = -8 d
    }
    y[j] = Hsum256(acc[j]) + o;
  }
}

// Several activation rows (a prompt chunk): one weight row's block is expanded and scaled by d once
// for G rows of x (G = 8 or 4; d * q is exact, an f16 scale times a 4- or 8-bit value). The offset
// terms read sum(x) per block from xsum_t, laid out block-major (G rows' sums side by side).
template <int K, int G>
CJ_AVX2 inline void RowGroupAvx2(const uint8_t* row, const float* x, const float* xsum_t, int64_t m_rows, int64_t k,
                                 int64_t nb, float* y, int64_t n) {
  static_assert(G == 8 || G == 4, "groups of 8 or 4 rows of x");
  __m256 acc[G];
  for (int g = 0; g < G; ++g) acc[g] = _mm256_setzero_ps();
  __m256 offsets8 = _mm256_setzero_ps();  // lane g: row g's sum of m * sum(x) (Q4_1) or d * sum(x) (Q4_0)
  __m128 offsets4 = _mm_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = row + b * Fmt<K>::kBytes;
    const float d = Half2(LoadU16(blk));
    __m256 q[4];
    ExpandFromMemory256<K>(blk, q);
    const __m256 ds = _mm256_set1_ps(d);
    for (int j = 0; j < 4; ++j) q[j] = _mm256_mul_ps(q[j], ds);
    if constexpr (!Fmt<K>::kEight) {
      const float o = Fmt<K>::kMin ? Half2(LoadU16(blk + 2)) : d;
      if constexpr (G == 8) {
        offsets8 = _mm256_fmadd_ps(_mm256_set1_ps(o), _mm256_loadu_ps(xsum_t + b * m_rows), offsets8);
      } else {
        offsets4 = _mm_fmadd_ps(_mm_set1_ps(o), _mm_loadu_ps(xsum_t + b * m_rows), offsets4);
      }
    }
    for (int g = 0; g < G; ++g) {
      const float* xb = x + g * k + b * kBlock;
      acc[g] = _mm256_fmadd_ps(q[0], _mm256_loadu_ps(xb), acc[g]);
      acc[g] = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xb + 8), acc[g]);
      acc[g] = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xb + 16), acc[g]);
      acc[g] = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb + 24), acc[g]);
    }
  }
  alignas(32) float off[8];
  if constexpr (G == 8) {
    _mm256_store_ps(off, offsets8);
  } else {
    _mm_store_ps(off, offsets4);
  }
  for (int g = 0; g < G; ++g) {
    float o = 0.0f;  // Q8_0
    if constexpr (Fmt<K>::kMin) {
      o = off[g];
    } else if constexpr (!Fmt<K>::kEight) {
      o = -8.0f * off[g];  // Q4_0: m = -8 d
    }
    y[g * n] = Hsum256(acc[g]) + o;
  }
}

template <int K>
CJ_AVX2 void RowsAvx2(const uint8_t* w, size_t row_bytes, const float* x, const float* xsum, int64_t m_rows,
                      int64_t k, int64_t n, int64_t r0, int64_t r1, float* y) {
  const int64_t nb = k / kBlock;
  if (m_rows != 1) {
    const int64_t grouped = m_rows / 4 * 4;
    if (grouped > 0) {
      std::vector<float> xsum_t(static_cast<size_t>(nb * m_rows));
      for (int64_t i = 0; i < m_rows; ++i) {
        for (int64_t b = 0; b < nb; ++b) xsum_t[b * m_rows + i] = xsum[i * nb + b];
      }
      // a group of x's rows (8 x K floats: 18 KiB at K = 576) stays in L1 while the chunk's weight rows pass
      int64_t i = 0;
      for (; i + 8 <= grouped; i += 8) {
        for (int64_t r = r0; r < r1; ++r) {
          RowGroupAvx2<K, 8>(w + r * row_bytes, x + i * k, xsum_t.data() + i, m_rows, k, nb, y + i * n + r, n);
        }
      }
      for (; i < grouped; i += 4) {
        for (int64_t r = r0; r < r1; ++r) {
          RowGroupAvx2<K, 4>(w + r * row_bytes, x + i * k, xsum_t.data() + i, m_rows, k, nb, y + i * n + r, n);
        }
      }
    }
    // the last m_rows % 4 rows of x one at a time, through the decode loop
    for (int64_t i = grouped; i < m_rows; ++i) {
      RowsAvx2<K>(w, row_bytes, x + i * k, xsum + i * nb, 1, k, n, r0, r1, y + i * n);
    }
    return;
  }
  // decode: four weight rows per pass share the loads of x and overlap their chains
  int64_t r = r0;
  const RowPrefetch ahead(w, row_bytes, r, r1);
  for (; r + 4 <= r1; r += 4) {
    ahead.Next(r);
    FourRowsAvx2<K>(w + r * row_bytes, row_bytes, x, xsum, nb, y + r);
  }
  for (; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float macc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * Fmt<K>::kBytes;
      const float d = Half2(LoadU16(blk));
      __m256 q[4];
      Expand256<K>(blk, q);
      const float* xb = x + b * kBlock;
      __m256 t = _mm256_mul_ps(q[0], _mm256_loadu_ps(xb));
      __m256 u = _mm256_mul_ps(q[1], _mm256_loadu_ps(xb + 8));
      t = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xb + 16), t);
      u = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb + 24), u);
      const __m256 ds = _mm256_set1_ps(d);
      acc0 = _mm256_fmadd_ps(ds, t, acc0);
      acc1 = _mm256_fmadd_ps(ds, u, acc1);
      if constexpr (!Fmt<K>::kEight) macc += Offset<K>(blk, d, Half2) * xsum[b];
    }
    y[r] = Hsum256(_mm256_add_ps(acc0, acc1)) + macc;
  }
}

// ------------------------------------------------------------------------------------------------
// AVX-512 path (16 lanes): a block expands to two vectors of 16 values

CJ_AVX512 inline float Half5(uint16_t h) { return _cvtsh_ss(h); }

template <int K>
CJ_AVX512 inline void Expand512(const uint8_t* blk, __m512* lo, __m512* hi) {
  const uint8_t* qs = blk + Fmt<K>::kQs;
  if constexpr (Fmt<K>::kEight) {
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs))));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + 16))));
  } else {
    const __m128i m4 = _mm_set1_epi8(15);
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(raw, m4)));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(raw, 4), m4)));
  }
}

// one weight row against G rows of x, the partial sums of all G in registers
template <int K, int G>
CJ_AVX512 inline void RowGroupAvx512(const uint8_t* row, const float* x, const float* xsum, int64_t k, int64_t nb,
                                     float* y, int64_t n) {
  __m512 acc[G];
  float macc[G];
  for (int g = 0; g < G; ++g) {
    acc[g] = _mm512_setzero_ps();
    macc[g] = 0.0f;
  }
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = row + b * Fmt<K>::kBytes;
    const float d = Half5(LoadU16(blk));
    __m512 lo, hi;
    Expand512<K>(blk, &lo, &hi);
    const __m512 ds = _mm512_set1_ps(d);
    lo = _mm512_mul_ps(lo, ds);
    hi = _mm512_mul_ps(hi, ds);
    const float mn = Offset<K>(blk, d, Half5);
    for (int g = 0; g < G; ++g) {
      const float* xb = x + g * k + b * kBlock;
      acc[g] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb), acc[g]);
      acc[g] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), acc[g]);
      if constexpr (!Fmt<K>::kEight) macc[g] += mn * xsum[g * nb + b];
    }
  }
  for (int g = 0; g < G; ++g) y[g * n] = _mm512_reduce_add_ps(acc[g]) + macc[g];
}

template <int K>
CJ_AVX512 void RowsAvx512(const uint8_t* w, size_t row_bytes, const float* x, const float* xsum, int64_t m_rows,
                          int64_t k, int64_t n, int64_t r0, int64_t r1, float* y) {
  const int64_t nb = k / kBlock;
  int64_t r = r0;
  if (m_rows == 1) {  // decode: four weight rows per pass share the loads of x and overlap their chains
    const RowPrefetch ahead(w, row_bytes, r, r1);
    for (; r + 4 <= r1; r += 4) {
      ahead.Next(r);
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      float macc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int64_t b = 0; b < nb; ++b) {
        const __m512 x0 = _mm512_loadu_ps(x + b * kBlock);
        const __m512 x1 = _mm512_loadu_ps(x + b * kBlock + 16);
        const float xs = xsum[b];
        for (int j = 0; j < 4; ++j) {
          const uint8_t* blk = w + (r + j) * row_bytes + b * Fmt<K>::kBytes;
          const float d = Half5(LoadU16(blk));
          __m512 lo, hi;
          Expand512<K>(blk, &lo, &hi);
          const __m512 t = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
          acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(d), t, acc[j]);
          if constexpr (!Fmt<K>::kEight) macc[j] += Offset<K>(blk, d, Half5) * xs;
        }
      }
      for (int j = 0; j < 4; ++j) y[r + j] = _mm512_reduce_add_ps(acc[j]) + macc[j];
    }
    for (; r < r1; ++r) RowGroupAvx512<K, 1>(w + r * row_bytes, x, xsum, k, nb, y + r, n);
    return;
  }
  // several activation rows (a prompt chunk): groups of up to 8 rows of x share each expanded block
  for (; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    int64_t i = 0;
    for (; i + 8 <= m_rows; i += 8) RowGroupAvx512<K, 8>(row, x + i * k, xsum + i * nb, k, nb, y + i * n + r, n);
    for (; i + 4 <= m_rows; i += 4) RowGroupAvx512<K, 4>(row, x + i * k, xsum + i * nb, k, nb, y + i * n + r, n);
    for (; i < m_rows; ++i) RowGroupAvx512<K, 1>(row, x + i * k, xsum + i * nb, k, nb, y + i * n + r, n);
  }
}

template <int K>
RowsFn PickFor(int isa) {
  switch (isa) {
    case 2:
      return RowsAvx512<K>;
    case 1:
      return RowsAvx2<K>;
    default:
      return RowsPortable<K>;
  }
}
ffi::Error QMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w, ffi::Buffer<ffi::S32> layer,
                   ffi::ResultBuffer<ffi::F32> out, int32_t kind) {
  int block_bytes;
  RowsFn rows;
  const int isa = ActiveIsa();
  if (kind == kQ4_0) {
    block_bytes = Fmt<kQ4_0>::kBytes, rows = PickFor<kQ4_0>(isa);
  } else if (kind == kQ4_1) {
    block_bytes = Fmt<kQ4_1>::kBytes, rows = PickFor<kQ4_1>(isa);
  } else if (kind == kQ8_0) {
    block_bytes = Fmt<kQ8_0>::kBytes, rows = PickFor<kQ8_0>(isa);
  } else {
    return ffi::Error::InvalidArgument("candlejax quantized matmul: kind must be 2 (Q4_0), 3 (Q4_1) or 8 (Q8_0), got " +
                                       std::to_string(kind));
  }
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || (wd.size() != 2 && wd.size() != 3) || w.element_type() != ffi::U8) {
    return ffi::Error::InvalidArgument(
        "candlejax quantized matmul: x must be (M, K) f32 and w (N, B) or (L, N, B) u8");
  }
  const int64_t m_rows = xd[0], k = xd[1];
  const int64_t n = wd[wd.size() - 2], row_bytes = wd[wd.size() - 1];
  if (k % kBlock != 0 || row_bytes != k / kBlock * block_bytes) {
    return ffi::Error::InvalidArgument("candlejax quantized matmul: x's last dim " + std::to_string(k) +
                                       " does not match the weight's row of " + std::to_string(row_bytes) + " bytes");
  }
  const auto od = out->dimensions();
  if (od.size() != 2 || od[0] != m_rows || od[1] != n) {
    return ffi::Error::InvalidArgument("candlejax quantized matmul: result must be (M, N)");
  }
  const uint8_t* wp = static_cast<const uint8_t*>(w.untyped_data());
  if (wd.size() == 3) {
    const int32_t l = *layer.typed_data();
    if (l < 0 || l >= wd[0]) {
      return ffi::Error::InvalidArgument("candlejax quantized matmul: layer " + std::to_string(l) +
                                         " out of range [0, " + std::to_string(wd[0]) + ")");
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
  static const int64_t max_threads = [] {
    const char* v = std::getenv("CANDLEJAX_NATIVE_THREADS");
    return v ? std::atoll(v) : int64_t{-1};
  }();
  // helpers besides the calling thread: the pool's size in all (one more shared two cores with the
  // others: SmolLM2 decode on the 2-core AMD host 86-90 -> 91-94 tok/s)
  int64_t threads = pool.num_threads() - 1;
  if (max_threads >= 0) threads = std::min(threads, max_threads - 1);
  const int64_t work = n * k * std::max<int64_t>(m_rows, 1);
  if (threads <= 0 || work < (int64_t{1} << 17) || n < 64) {
    rows(wp, row_bytes, xp, xsum.data(), m_rows, k, n, 0, n, yp);
    return ffi::Error::Success();
  }
  const float* xs = xsum.data();
  ParallelRows(pool, threads, n,
               [=](int64_t r0, int64_t r1) { rows(wp, row_bytes, xp, xs, m_rows, k, n, r0, r1, yp); });
  return ffi::Error::Success();
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CandlejaxQMatmul, QMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("kind"));
