// candlejax native f32 kernels for the CPU, as XLA FFI handlers (registered by
// candlejax/quantized/native.py): y = x @ W^T for an f32 weight W (N, K) in PyTorch's Linear layout
// (F32Matmul: few activation rows, or register-tiled blocks for many), and on the same blocks a
// channels-last convolution (F32ConvNhwc) and attention (F32Attention); the convolution's kernel
// gradient (F32ConvKernelGradNhwc).
#include <array>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "native_common.h"

namespace ffi = xla::ffi;

namespace {

using candlejax_native::ActiveIsa;
using candlejax_native::ParallelChunks;
using candlejax_native::ParallelRows;
using candlejax_native::RowPrefetch;

// --- f32 products with few activation rows --------------------------------------------------------
// y (M, N) = x (M, K) @ W^T for an f32 weight W (N, K) in PyTorch's Linear layout. Each group of four
// weight rows is read once and multiplied with the activation rows four at a time while it sits in
// L1 (dot products along K in 16 lanes, a masked tail, reduced at the end). For the handful of rows
// of a single-sentence encoder call XLA:CPU's library product runs at ~90 GFLOP/s on two cores.

void F32RowsPortable(const float* x, const float* w, int64_t m, int64_t k, int64_t n, int64_t r0, int64_t r1,
                     float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t i = 0; i < m; ++i) {
      float s = 0.0f;
      for (int64_t c = 0; c < k; ++c) s += x[i * k + c] * w[r * k + c];
      y[i * n + r] = s;
    }
  }
}

template <int MB, int NB>
CJ_AVX512 inline void F32BlockAvx512(const float* x, const float* w, int64_t k, int64_t n, int64_t r, float* y) {
  __m512 acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t kv = k / 16 * 16;
  for (int64_t c = 0; c < kv; c += 16) {
    __m512 b[NB];
    for (int j = 0; j < NB; ++j) b[j] = _mm512_loadu_ps(w + (r + j) * k + c);
    for (int i = 0; i < MB; ++i) {
      const __m512 a = _mm512_loadu_ps(x + i * k + c);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  if (kv < k) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (k - kv)) - 1u);
    __m512 b[NB];
    for (int j = 0; j < NB; ++j) b[j] = _mm512_maskz_loadu_ps(tail, w + (r + j) * k + kv);
    for (int i = 0; i < MB; ++i) {
      const __m512 a = _mm512_maskz_loadu_ps(tail, x + i * k + kv);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) y[i * n + r + j] = _mm512_reduce_add_ps(acc[i][j]);
}

template <int NB>
CJ_AVX512 inline void F32RowGroupAvx512(const float* x, const float* w, int64_t m, int64_t k, int64_t n, int64_t r,
                                        float* y) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) F32BlockAvx512<4, NB>(x + i * k, w, k, n, r, y + i * n);
  switch (m - i) {
    case 3: F32BlockAvx512<3, NB>(x + i * k, w, k, n, r, y + i * n); break;
    case 2: F32BlockAvx512<2, NB>(x + i * k, w, k, n, r, y + i * n); break;
    case 1: F32BlockAvx512<1, NB>(x + i * k, w, k, n, r, y + i * n); break;
    default: break;
  }
}

CJ_AVX512 void F32RowsAvx512(const float* x, const float* w, int64_t m, int64_t k, int64_t n, int64_t r0, int64_t r1,
                             float* y) {
  int64_t r = r0;
  // one activation row (a decode step) streams the weight rows from memory: prefetch them; with
  // more rows each weight row is reused, and the prefetcher's range is empty
  const RowPrefetch ahead(w, static_cast<size_t>(k) * sizeof(float), r0, m == 1 ? r1 : r0);
  for (; r + 4 <= r1; r += 4) {
    ahead.Next(r);
    F32RowGroupAvx512<4>(x, w, m, k, n, r, y);
  }
  for (; r < r1; ++r) F32RowGroupAvx512<1>(x, w, m, k, n, r, y);
}

// --- f32 products with many activation rows -------------------------------------------------------
// Register tiles of 12 x 32 results (24 accumulators): per step along K, 12 activation values are
// broadcast against a 32-wide panel of weight rows, packed K-major so that a step reads two aligned
// vectors. Each worker packs the weight panels it uses, a group that stays in L2 at a time, and
// runs every tile of its activation rows against the group. Few rows (their activations fit in L2):
// the workers split the weight panels, each packing only its own; many rows: they split the rows.

// at most this many activation rows take the few-row product above
constexpr int64_t kFewRows = 48;
constexpr int kPanel = 32;
constexpr int kTile = 12;
// packed weight panels of a group are kept to about this many bytes (a share of a 2 MiB L2)
constexpr int64_t kPackedBytes = int64_t{1} << 20;
// pre-packed panels: while a group is used, the next group's lines are fetched into L2, this many
// per 16 steps along K of a tile
constexpr int kAheadLinesPerStep = 4;
// broadcast rows are read in place: their lines are fetched this many floats ahead
constexpr int64_t kAhead = 64;

// r[i] lane j <-> r[j] lane i
CJ_AVX512 inline void Transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    u[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  // u[4q + j]: rows 4q..4q+3 of columns j, j + 4, j + 8, j + 12 (one per 128-bit lane)
  for (int j = 0; j < 4; ++j) {
    const __m512 a = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), b = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xdd);
    const __m512 c = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 d = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xdd);
    r[j] = _mm512_shuffle_f32x4(a, c, 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(a, c, 0xdd);
    r[j + 4] = _mm512_shuffle_f32x4(b, d, 0x88);
    r[j + 12] = _mm512_shuffle_f32x4(b, d, 0xdd);
  }
}

inline __mmask16 FirstLanes(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xffff) : count <= 0 ? 0 : static_cast<__mmask16>((1u << count) - 1u);
}

// out[c * 32 + i] = a[i * lda + c] for c < k and the first `rows` (<= 32) rows of a (lda: k unless
// given), zero for the rows past them; out is 64-byte aligned
CJ_AVX512 void PackPanel(const float* a, int64_t k, int64_t rows, float* out, int64_t lda = -1) {
  if (lda < 0) lda = k;
  for (int half = 0; half < 2; ++half) {
    const int64_t base = half * 16;
    for (int64_t c0 = 0; c0 < k; c0 += 16) {
      const int64_t kc = std::min<int64_t>(16, k - c0);
      const __mmask16 cols = FirstLanes(kc);
      __m512 r[16];
      for (int i = 0; i < 16; ++i) {
        r[i] = base + i < rows ? _mm512_maskz_loadu_ps(cols, a + (base + i) * lda + c0) : _mm512_setzero_ps();
      }
      Transpose16(r);
      for (int64_t j = 0; j < kc; ++j) _mm512_store_ps(out + (c0 + j) * kPanel + base, r[j]);
    }
  }
}

// Rows of the product's left operand, read in place, as `c` values per tap. A product: row i of
// x (M, K), one tap. A convolution over an NHWC input: output position i, whose K = taps x channels
// values are the channel vectors at its taps (an implicit im2col); a tap in the padding reads zeros.
struct DenseRows {
  const float* x;
  int64_t ld;  // row stride
  using Pos = const float*;
  Pos Locate(int64_t i) const { return x + i * ld; }
  const float* Tap(Pos p, int64_t) const { return p; }
};

struct ConvRows {
  const float* x;      // (B, H, W, C)
  const float* zeros;  // C zeros, for taps in the padding
  const int64_t* tap_yx;  // (dy, dx) of each tap, dilation included
  int64_t ho, wo, h, w, c, sh, sw, ph, pw;
  struct Pos {
    int64_t b, y, x;  // the batch index and the top-left input coordinate (may be negative)
  };
  Pos Locate(int64_t i) const {
    const int64_t b = i / (ho * wo), r = i % (ho * wo);
    return {b, (r / wo) * sh - ph, (r % wo) * sw - pw};
  }
  const float* Tap(const Pos& p, int64_t t) const {
    const int64_t yy = p.y + tap_yx[2 * t], xx = p.x + tap_yx[2 * t + 1];
    if (yy < 0 || yy >= h || xx < 0 || xx >= w) return zeros;
    return x + ((p.b * h + yy) * w + xx) * c;
  }
};

// what a tile does with its sums before storing them: add the bias (N values, or none), then ReLU
struct Epilogue {
  const float* bias;
  bool relu;
};

// y[i, j] for MR left rows i0.. and the 32 weight rows j0.. of a packed panel: per tap, `c` steps
// along K, the 32 values of one step `ldp` floats after the last (a packed panel: 32; a panel read
// in place from a K-major operand: its row stride)
template <int MR, typename Rows>
CJ_AVX512 inline void Tile(const Rows& rows, int64_t i0, int64_t ntaps, int64_t c, const float* panel, float* y,
                           int64_t ldy, int64_t j0, int64_t cols, const Epilogue& epi, const char* ahead = nullptr,
                           int64_t ahead_lines = 0, int64_t ldp = kPanel) {
  __m512 acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  typename Rows::Pos pos[MR];
  for (int i = 0; i < MR; ++i) pos[i] = rows.Locate(i0 + i);
  for (int64_t t = 0; t < ntaps; ++t) {
    const float* xr[MR];
    for (int i = 0; i < MR; ++i) xr[i] = rows.Tap(pos[i], t);
    const float* pt = panel + t * c * ldp;
    for (int64_t c0 = 0; c0 < c; c0 += 16) {
      for (int i = 0; i < MR; ++i) _mm_prefetch(reinterpret_cast<const char*>(xr[i] + c0 + kAhead), _MM_HINT_T0);
      for (int l = 0; l < kAheadLinesPerStep && ahead_lines > 0; ++l, --ahead_lines, ahead += 64) {
        _mm_prefetch(ahead, _MM_HINT_T1);
      }
      const int64_t c1 = std::min<int64_t>(c, c0 + 16);
#pragma GCC unroll 4
      for (int64_t q = c0; q < c1; ++q) {
        const __m512 b0 = _mm512_loadu_ps(pt + q * ldp), b1 = _mm512_loadu_ps(pt + q * ldp + 16);
        for (int i = 0; i < MR; ++i) {
          const __m512 a = _mm512_set1_ps(xr[i][q]);
          acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
          acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
        }
      }
    }
  }
  const __mmask16 keep0 = FirstLanes(cols), keep1 = FirstLanes(cols - 16);
  if (epi.bias != nullptr) {
    const __m512 bias0 = _mm512_maskz_loadu_ps(keep0, epi.bias + j0);
    const __m512 bias1 = _mm512_maskz_loadu_ps(keep1, epi.bias + j0 + 16);
    for (int i = 0; i < MR; ++i) {
      acc[i][0] = _mm512_add_ps(acc[i][0], bias0);
      acc[i][1] = _mm512_add_ps(acc[i][1], bias1);
    }
  }
  if (epi.relu) {
    for (int i = 0; i < MR; ++i) {
      acc[i][0] = _mm512_max_ps(acc[i][0], _mm512_setzero_ps());
      acc[i][1] = _mm512_max_ps(acc[i][1], _mm512_setzero_ps());
    }
  }
  for (int i = 0; i < MR; ++i) {
    _mm512_mask_storeu_ps(y + i * ldy + j0, keep0, acc[i][0]);
    _mm512_mask_storeu_ps(y + i * ldy + j0 + 16, keep1, acc[i][1]);
  }
}

// std::vector storage on 64-byte boundaries (packed panels are read with aligned loads)
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  explicit AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64)); }
  void deallocate(T* p, size_t) { std::free(p); }
  bool operator==(const AlignedAllocator&) const { return true; }
  bool operator!=(const AlignedAllocator&) const { return false; }
};

// this thread's scratch buffer `which` with room for `floats` (kept for its next call): 0 the blocked
// product's packed weight panels; 1, 2, 3 the attention's packed keys, packed values and scores
float* Scratch(int which, int64_t floats) {
  thread_local std::vector<float, AlignedAllocator<float>> buffers[4];
  auto& b = buffers[which];
  if (static_cast<int64_t>(b.size()) < floats) b.resize(static_cast<size_t>(floats));
  return b.data();
}

// the product's geometry: M left rows of K = ntaps x c values against N weight rows (N, K)
template <typename Rows>
struct Blocked {
  Rows rows;
  int64_t ntaps, c, m, n;
  const float* w;
  float* y;  // (M, N)
  Epilogue epi;
  const float* panels = nullptr;  // w already packed, (ceil(N / 32), K, 32), or none
};

// left rows [i0, i1) against weight panels [p0, p1): groups of panels packed into this thread's
// scratch (kept for its next call), each group used by every tile of rows
template <typename Rows>
CJ_AVX512 void BlockedRows(const Blocked<Rows>& g, int64_t i0, int64_t i1, int64_t p0, int64_t p1) {
  const int64_t k = g.ntaps * g.c, n = g.n;
  const int64_t per_group = std::max<int64_t>(1, std::min(p1 - p0, kPackedBytes / (k * kPanel * 4)));
  float* scratch = g.panels == nullptr ? Scratch(0, per_group * k * kPanel) : nullptr;
  for (int64_t g0 = p0; g0 < p1; g0 += per_group) {
    const int64_t g1 = std::min(p1, g0 + per_group);
    const float* packed = scratch;
    if (scratch == nullptr) {
      packed = g.panels + g0 * k * kPanel;
    } else {
      for (int64_t p = g0; p < g1; ++p) {
        PackPanel(g.w + p * kPanel * k, k, std::min<int64_t>(kPanel, n - p * kPanel), scratch + (p - g0) * k * kPanel);
      }
    }
    // pre-packed: the next group's panels, spread over this group's tiles
    const char* ahead = nullptr;
    int64_t ahead_lines = 0, per_tile = 0;
    if (scratch == nullptr && g1 < p1) {
      ahead = reinterpret_cast<const char*>(g.panels + g1 * k * kPanel);
      ahead_lines = (std::min(p1, g1 + per_group) - g1) * k * kPanel * 4 / 64;
      const int64_t calls = ((i1 - i0 + kTile - 1) / kTile) * (g1 - g0);
      per_tile = (ahead_lines + calls - 1) / calls;
    }
    auto tiles = [&](auto mr, int64_t i) {
      for (int64_t p = g0; p < g1; ++p) {
        const int64_t lines = std::min(per_tile, ahead_lines);
        Tile<decltype(mr)::value>(g.rows, i, g.ntaps, g.c, packed + (p - g0) * k * kPanel, g.y + i * n, n,
                                  p * kPanel, std::min<int64_t>(kPanel, n - p * kPanel), g.epi, ahead, lines);
        ahead += lines * 64;
        ahead_lines -= lines;
      }
    };
    int64_t i = i0;
    for (; i + kTile <= i1; i += kTile) tiles(std::integral_constant<int, kTile>{}, i);
    for (; i + 4 <= i1; i += 4) tiles(std::integral_constant<int, 4>{}, i);
    for (; i < i1; ++i) tiles(std::integral_constant<int, 1>{}, i);
  }
}

// the blocked product over `workers` threads (the caller and workers - 1 of the pool's); few left
// rows (`left_bytes` fit in L2): the workers split the weight panels, else the rows
template <typename Rows>
CJ_AVX512 void F32BlockedAvx512(ffi::ThreadPool& pool, int64_t workers, const Blocked<Rows>& g, int64_t left_bytes) {
  const int64_t panels = (g.n + kPanel - 1) / kPanel;
  if (workers <= 1) {
    BlockedRows(g, 0, g.m, 0, panels);
  } else if (left_bytes <= kPackedBytes && panels >= 2 * workers) {
    ParallelChunks(pool, workers - 1, panels, 1, workers, [=](int64_t p0, int64_t p1) { BlockedRows(g, 0, g.m, p0, p1); });
  } else {
    ParallelChunks(pool, workers - 1, g.m, kTile, workers, [=](int64_t i0, int64_t i1) { BlockedRows(g, i0, i1, 0, panels); });
  }
}

// workers for a product of `work` multiply-adds: one below ~128K, else all of the pool's threads
int64_t Workers(ffi::ThreadPool& pool, int64_t work) {
  return work < (int64_t{1} << 17) ? 1 : std::max<int64_t>(1, pool.num_threads());
}

// --- the blocked product on AVX2 + FMA CPUs (16 ymm registers) ------------------------------------
// The same 32-wide K-major panels (packed by PackPanelAvx2, or pre-packed) and the same split over
// workers, on tiles of 6 rows x 16 columns (12 accumulators, two panel vectors and a broadcast): a
// panel is two halves of 16 columns, each half's 6 x K-step products summed in registers. Panels are
// grouped by kPackedBytesAvx2 (a share of a 512 KiB L2, as on AMD Zen 2/3).

constexpr int kTileAvx2 = 6;
constexpr int64_t kPackedBytesAvx2 = int64_t{1} << 18;

// the first `count` (clamped to 0..8) lanes set: a mask for _mm256_maskload_ps / _mm256_maskstore_ps
CJ_AVX2 inline __m256i FirstLanes8(int64_t count) {
  const int64_t n = std::max<int64_t>(0, std::min<int64_t>(8, count));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// r[i] lane j <-> r[j] lane i
CJ_AVX2 inline void Transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);
    r[j + 4] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31);
  }
}

// PackPanel's layout (out[c * 32 + i] = a[i * lda + c], zeros for rows past `rows`; out 32-byte
// aligned) in 8 x 8 blocks
CJ_AVX2 void PackPanelAvx2(const float* a, int64_t k, int64_t rows, float* out, int64_t lda = -1) {
  if (lda < 0) lda = k;
  for (int64_t i0 = 0; i0 < kPanel; i0 += 8) {
    for (int64_t c0 = 0; c0 < k; c0 += 8) {
      const int64_t kc = std::min<int64_t>(8, k - c0);
      const __m256i cols = FirstLanes8(kc);
      __m256 r[8];
      for (int j = 0; j < 8; ++j) {
        r[j] = i0 + j < rows ? _mm256_maskload_ps(a + (i0 + j) * lda + c0, cols) : _mm256_setzero_ps();
      }
      Transpose8(r);
      for (int64_t j = 0; j < kc; ++j) _mm256_store_ps(out + (c0 + j) * kPanel + i0, r[j]);
    }
  }
}

// Tile's contract (MR left rows i0.. against one packed panel, columns j0.., `cols` of them kept,
// then the epilogue) on AVX2: each 16-column half of the panel in turn, a half with no kept column
// skipped
template <int MR, typename Rows>
CJ_AVX2 inline void TileAvx2(const Rows& rows, int64_t i0, int64_t ntaps, int64_t c, const float* panel, float* y,
                             int64_t ldy, int64_t j0, int64_t cols, const Epilogue& epi, const char* ahead = nullptr,
                             int64_t ahead_lines = 0, int64_t ldp = kPanel) {
  typename Rows::Pos pos[MR];
  for (int i = 0; i < MR; ++i) pos[i] = rows.Locate(i0 + i);
  for (int h = 0; h < 2 && h * 16 < cols; ++h) {
    __m256 acc[MR][2];
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t t = 0; t < ntaps; ++t) {
      const float* xr[MR];
      for (int i = 0; i < MR; ++i) xr[i] = rows.Tap(pos[i], t);
      const float* pt = panel + t * c * ldp + h * 16;
      for (int64_t c0 = 0; c0 < c; c0 += 16) {
        if (h == 0) {
          for (int i = 0; i < MR; ++i) _mm_prefetch(reinterpret_cast<const char*>(xr[i] + c0 + kAhead), _MM_HINT_T0);
        }
        for (int l = 0; l < kAheadLinesPerStep / 2 && ahead_lines > 0; ++l, --ahead_lines, ahead += 64) {
          _mm_prefetch(ahead, _MM_HINT_T1);
        }
        const int64_t c1 = std::min<int64_t>(c, c0 + 16);
#pragma GCC unroll 4
        for (int64_t q = c0; q < c1; ++q) {
          const __m256 b0 = _mm256_loadu_ps(pt + q * ldp), b1 = _mm256_loadu_ps(pt + q * ldp + 8);
          for (int i = 0; i < MR; ++i) {
            const __m256 a = _mm256_broadcast_ss(xr[i] + q);
            acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
          }
        }
      }
    }
    const int64_t jh = j0 + h * 16, left = cols - h * 16;
    const __m256i keep0 = FirstLanes8(left), keep1 = FirstLanes8(left - 8);
    if (epi.bias != nullptr) {
      const __m256 bias0 = _mm256_maskload_ps(epi.bias + jh, keep0), bias1 = _mm256_maskload_ps(epi.bias + jh + 8, keep1);
      for (int i = 0; i < MR; ++i) {
        acc[i][0] = _mm256_add_ps(acc[i][0], bias0);
        acc[i][1] = _mm256_add_ps(acc[i][1], bias1);
      }
    }
    if (epi.relu) {
      for (int i = 0; i < MR; ++i) {
        acc[i][0] = _mm256_max_ps(acc[i][0], _mm256_setzero_ps());
        acc[i][1] = _mm256_max_ps(acc[i][1], _mm256_setzero_ps());
      }
    }
    for (int i = 0; i < MR; ++i) {
      if (left >= 16) {
        _mm256_storeu_ps(y + i * ldy + jh, acc[i][0]);
        _mm256_storeu_ps(y + i * ldy + jh + 8, acc[i][1]);
      } else {
        _mm256_maskstore_ps(y + i * ldy + jh, keep0, acc[i][0]);
        _mm256_maskstore_ps(y + i * ldy + jh + 8, keep1, acc[i][1]);
      }
    }
  }
}

// TileAvx2 for the 1 to 5 rows left after the tiles of six
template <typename Rows>
CJ_AVX2 void TileAvx2Rows(int mr, const Rows& rows, int64_t i0, int64_t ntaps, int64_t c, const float* panel,
                          float* y, int64_t ldy, int64_t j0, int64_t cols, const Epilogue& epi) {
  switch (mr) {
    case 5: return TileAvx2<5>(rows, i0, ntaps, c, panel, y, ldy, j0, cols, epi);
    case 4: return TileAvx2<4>(rows, i0, ntaps, c, panel, y, ldy, j0, cols, epi);
    case 3: return TileAvx2<3>(rows, i0, ntaps, c, panel, y, ldy, j0, cols, epi);
    case 2: return TileAvx2<2>(rows, i0, ntaps, c, panel, y, ldy, j0, cols, epi);
    default: return TileAvx2<1>(rows, i0, ntaps, c, panel, y, ldy, j0, cols, epi);
  }
}

// BlockedRows on AVX2: left rows [i0, i1) against weight panels [p0, p1)
template <typename Rows>
CJ_AVX2 void BlockedRowsAvx2(const Blocked<Rows>& g, int64_t i0, int64_t i1, int64_t p0, int64_t p1) {
  const int64_t k = g.ntaps * g.c, n = g.n;
  const int64_t per_group = std::max<int64_t>(1, std::min(p1 - p0, kPackedBytesAvx2 / (k * kPanel * 4)));
  float* scratch = g.panels == nullptr ? Scratch(0, per_group * k * kPanel) : nullptr;
  for (int64_t g0 = p0; g0 < p1; g0 += per_group) {
    const int64_t g1 = std::min(p1, g0 + per_group);
    const float* packed = scratch;
    if (scratch == nullptr) {
      packed = g.panels + g0 * k * kPanel;
    } else {
      for (int64_t p = g0; p < g1; ++p) {
        PackPanelAvx2(g.w + p * kPanel * k, k, std::min<int64_t>(kPanel, n - p * kPanel),
                      scratch + (p - g0) * k * kPanel);
      }
    }
    // pre-packed: the next group's panels, spread over this group's tiles of six rows
    const char* ahead = nullptr;
    int64_t ahead_lines = 0, per_tile = 0;
    if (scratch == nullptr && g1 < p1) {
      ahead = reinterpret_cast<const char*>(g.panels + g1 * k * kPanel);
      ahead_lines = (std::min(p1, g1 + per_group) - g1) * k * kPanel * 4 / 64;
      const int64_t calls = std::max<int64_t>(1, (i1 - i0) / kTileAvx2 * (g1 - g0));
      per_tile = (ahead_lines + calls - 1) / calls;
    }
    int64_t i = i0;
    for (; i + kTileAvx2 <= i1; i += kTileAvx2) {
      for (int64_t p = g0; p < g1; ++p) {
        const int64_t lines = std::min(per_tile, ahead_lines);
        TileAvx2<kTileAvx2>(g.rows, i, g.ntaps, g.c, packed + (p - g0) * k * kPanel, g.y + i * n, n, p * kPanel,
                            std::min<int64_t>(kPanel, n - p * kPanel), g.epi, ahead, lines);
        ahead += lines * 64;
        ahead_lines -= lines;
      }
    }
    if (i < i1) {
      for (int64_t p = g0; p < g1; ++p) {
        TileAvx2Rows(static_cast<int>(i1 - i), g.rows, i, g.ntaps, g.c, packed + (p - g0) * k * kPanel, g.y + i * n,
                     n, p * kPanel, std::min<int64_t>(kPanel, n - p * kPanel), g.epi);
      }
    }
  }
}

// F32BlockedAvx512's split over workers, on the AVX2 tiles
template <typename Rows>
CJ_AVX2 void F32BlockedAvx2(ffi::ThreadPool& pool, int64_t workers, const Blocked<Rows>& g, int64_t left_bytes) {
  const int64_t panels = (g.n + kPanel - 1) / kPanel;
  if (workers <= 1) {
    BlockedRowsAvx2(g, 0, g.m, 0, panels);
  } else if (left_bytes <= kPackedBytes && panels >= 2 * workers) {
    ParallelChunks(pool, workers - 1, panels, 1, workers,
                   [=](int64_t p0, int64_t p1) { BlockedRowsAvx2(g, 0, g.m, p0, p1); });
  } else {
    ParallelChunks(pool, workers - 1, g.m, kTile, 4 * workers,
                   [=](int64_t i0, int64_t i1) { BlockedRowsAvx2(g, i0, i1, 0, panels); });
  }
}

// y (B, Ho, Wo, O) = act(conv(x, w) + bias) for a channels-last x (B, H, W, C), a kernel
// (O, kh * kw * C) in OHWI order, zero padding, stride and dilation; bias (O,) or (0,) for none,
// act 0 none or 1 ReLU; on AVX-512 or AVX2 CPUs
ffi::Error F32ConvNhwc(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> out, int64_t kh, int64_t kw, int64_t sh,
                       int64_t sw, int64_t dh, int64_t dw, int64_t ph, int64_t pw, int64_t act) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  const auto od = out->dimensions();
  if (xd.size() != 4 || wd.size() != 2 || od.size() != 4 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 ||
      dw < 1 || ph < 0 || pw < 0 || act < 0 || act > 1 || wd[1] != kh * kw * xd[3]) {
    return ffi::Error::InvalidArgument(
        "candlejax f32 conv: x must be (B, H, W, C), w (O, kh * kw * C) and the geometry positive");
  }
  const int64_t bsz = xd[0], h = xd[1], wi = xd[2], c = xd[3], o = wd[0];
  const int64_t span_h = h + 2 * ph - dh * (kh - 1) - 1, span_w = wi + 2 * pw - dw * (kw - 1) - 1;
  if (span_h < 0 || span_w < 0) {  // (a negative span would truncate toward zero below)
    return ffi::Error::InvalidArgument("candlejax f32 conv: the dilated kernel does not fit the padded input");
  }
  const int64_t ho = span_h / sh + 1, wo = span_w / sw + 1;
  if (od[0] != bsz || od[1] != ho || od[2] != wo || od[3] != o) {
    return ffi::Error::InvalidArgument("candlejax f32 conv: result must be (B, Ho, Wo, O) for this geometry");
  }
  if (bias.element_count() != 0 && bias.element_count() != static_cast<size_t>(o)) {
    return ffi::Error::InvalidArgument("candlejax f32 conv: bias must have O values or none");
  }
  if (ActiveIsa() < 1) return ffi::Error::InvalidArgument("candlejax f32 conv: needs an AVX2 or AVX-512 CPU");
  std::vector<int64_t> tap_yx;
  for (int64_t r = 0; r < kh; ++r) {
    for (int64_t q = 0; q < kw; ++q) {
      tap_yx.push_back(r * dh);
      tap_yx.push_back(q * dw);
    }
  }
  // zeros for taps in the padding, read up to kAhead floats past the vector's end by prefetches only
  std::vector<float> zeros(static_cast<size_t>(c), 0.0f);
  const int64_t m = bsz * ho * wo;
  const Blocked<ConvRows> g{ConvRows{x.typed_data(), zeros.data(), tap_yx.data(), ho, wo, h, wi, c, sh, sw, ph, pw},
                            kh * kw, c, m, o, w.typed_data(), out->typed_data(),
                            Epilogue{bias.element_count() ? bias.typed_data() : nullptr, act == 1}};
  if (ActiveIsa() == 1) {
    F32BlockedAvx2(pool, Workers(pool, m * wd[1] * o), g, bsz * h * wi * c * 4);
  } else {
    F32BlockedAvx512(pool, Workers(pool, m * wd[1] * o), g, bsz * h * wi * c * 4);
  }
  return ffi::Error::Success();
}

// --- convolution kernel gradient -------------------------------------------------------------------
// dW (O, kh * kw * C) = sum over the batch and output positions of dy (B, Ho, Wo, O) times the input
// values under each tap of a channels-last x (B, H, W, C): the kernel gradient of F32ConvNhwc's
// convolution, in its OHWI kernel order. XLA:CPU computes it as a convolution contracting over the
// batch, with x and dy first transposed batch-minor; here both are read as they are. Each chunk of
// images accumulates into its own (kh * kw * C, O) scratch (O contiguous: 16 output channels per
// vector), output positions in blocks that stay in L1, 8 input channels x 32 output channels of
// results in registers per pass; the chunks' sums are added and transposed at the end.

struct KernelGradGeometry {
  int64_t h, w, c, ho, wo, o, kh, kw, sh, sw, dh, dw, ph, pw;
};

// tap (r, q)'s input offset from an output position's first input (top, left), and the output rows
// [oh0, oh1) (within a block of rows) and columns [ow0, ow1) whose input under that tap is inside
struct TapWindow {
  int64_t top, left, oh0, oh1, ow0, ow1;
};

inline TapWindow InsideTap(const KernelGradGeometry& g, int64_t r, int64_t q, int64_t oh0, int64_t oh1) {
  const int64_t top = r * g.dh - g.ph, left = q * g.dw - g.pw;
  return {top, left, std::max(oh0, top >= 0 ? int64_t{0} : (-top + g.sh - 1) / g.sh),
          std::min(oh1, g.h - 1 - top < 0 ? int64_t{0} : (g.h - 1 - top) / g.sh + 1),
          left >= 0 ? 0 : (-left + g.sw - 1) / g.sw,
          std::min(g.wo, g.w - 1 - left < 0 ? int64_t{0} : (g.w - 1 - left) / g.sw + 1)};
}

// acc[CB x NV vectors] += x (CB channels at one input position) outer dy (NV x 16 output channels)
// over the output rows [oh0, oh1) of one image, at the positions whose input under tap (r, q) is inside
template <int CB, int NV>
CJ_AVX512 void KernelGradTile(const KernelGradGeometry& g, const float* xi, const float* dyi, int64_t oh0, int64_t oh1,
                              int64_t r, int64_t q, int64_t c0, int64_t o0, __mmask16 last, float* acc_rows) {
  const TapWindow tap = InsideTap(g, r, q, oh0, oh1);
  if (tap.oh0 >= tap.oh1 || tap.ow0 >= tap.ow1) return;
  const int64_t top = tap.top, left = tap.left, ow0 = tap.ow0, ow1 = tap.ow1;
  oh0 = tap.oh0;
  oh1 = tap.oh1;
  __m512 acc[CB][NV];
  for (int ci = 0; ci < CB; ++ci) {
    for (int v = 0; v < NV; ++v) {
      acc[ci][v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xFFFF, acc_rows + ci * g.o + o0 + 16 * v);
    }
  }
  const int64_t xstep = g.sw * g.c, o = g.o;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const float* xp = xi + ((oh * g.sh + top) * g.w + ow0 * g.sw + left) * g.c + c0;
    const float* dp = dyi + (oh * g.wo + ow0) * o + o0;
    for (int64_t ow = ow0; ow < ow1; ++ow, xp += xstep, dp += o) {
      __m512 d[NV];
      for (int v = 0; v < NV; ++v) d[v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xFFFF, dp + 16 * v);
      for (int ci = 0; ci < CB; ++ci) {
        const __m512 xv = _mm512_set1_ps(xp[ci]);
        for (int v = 0; v < NV; ++v) acc[ci][v] = _mm512_fmadd_ps(xv, d[v], acc[ci][v]);
      }
    }
  }
  for (int ci = 0; ci < CB; ++ci) {
    for (int v = 0; v < NV; ++v) {
      _mm512_mask_storeu_ps(acc_rows + ci * g.o + o0 + 16 * v, v == NV - 1 ? last : 0xFFFF, acc[ci][v]);
    }
  }
}

// CB (1 to 8; at most 6 for NV = 4: 24 result vectors, the rest of the 32 registers for dy and the
// broadcast) as a template argument
template <int NV>
CJ_AVX512 void KernelGradTileCb(int cb, const KernelGradGeometry& g, const float* xi, const float* dyi, int64_t oh0,
                                int64_t oh1, int64_t r, int64_t q, int64_t c0, int64_t o0, __mmask16 last,
                                float* acc_rows) {
  if constexpr (NV <= 2) {
    if (cb == 8) return KernelGradTile<8, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
    if (cb == 7) return KernelGradTile<7, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
  }
  switch (cb) {
    case 6: return KernelGradTile<6, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
    case 5: return KernelGradTile<5, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
    case 4: return KernelGradTile<4, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
    case 3: return KernelGradTile<3, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
    case 2: return KernelGradTile<2, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
    default: return KernelGradTile<1, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
  }
}

// images [b0, b1) into scratch (kh * kw * C, O), which holds the sums so far: blocks of rows of one
// image (~128 output positions), and within a block each 32 output channels' gradient rows stay in L1
// while every tap and input channel passes over them
CJ_AVX512 void KernelGradImages(const KernelGradGeometry& g, const float* x, const float* dy, int64_t b0, int64_t b1,
                                float* scratch) {
  const int64_t rows = std::max<int64_t>(1, 128 / g.wo);
  for (int64_t b = b0; b < b1; ++b) {
    const float* xi = x + b * g.h * g.w * g.c;
    const float* dyi = dy + b * g.ho * g.wo * g.o;
    for (int64_t oh0 = 0; oh0 < g.ho; oh0 += rows) {
      const int64_t oh1 = std::min(g.ho, oh0 + rows);
      for (int64_t o0 = 0; o0 < g.o;) {
        // 64 output channels (6 input channels a pass) while whole, else 32 (8 input channels)
        const int64_t cols = g.o - o0 >= 64 ? 64 : std::min<int64_t>(32, g.o - o0);
        const int64_t cstep = cols == 64 ? 6 : 8;
        for (int64_t r = 0; r < g.kh; ++r) {
          for (int64_t q = 0; q < g.kw; ++q) {
            float* tap_rows = scratch + (r * g.kw + q) * g.c * g.o;
            for (int64_t c0 = 0; c0 < g.c; c0 += cstep) {
              const int cb = static_cast<int>(std::min<int64_t>(cstep, g.c - c0));
              float* acc_rows = tap_rows + c0 * g.o;
              if (cols == 64) {
                KernelGradTileCb<4>(cb, g, xi, dyi, oh0, oh1, r, q, c0, o0, 0xFFFF, acc_rows);
              } else if (cols > 16) {
                KernelGradTileCb<2>(cb, g, xi, dyi, oh0, oh1, r, q, c0, o0, FirstLanes(cols - 16), acc_rows);
              } else {
                KernelGradTileCb<1>(cb, g, xi, dyi, oh0, oh1, r, q, c0, o0, FirstLanes(cols), acc_rows);
              }
            }
          }
        }
        o0 += cols;
      }
    }
  }
}

// KernelGradTile on AVX2: NV (1 or 2) vectors of 8 output channels, the last one's lanes `last`
template <int CB, int NV>
CJ_AVX2 void KernelGradTileAvx2(const KernelGradGeometry& g, const float* xi, const float* dyi, int64_t oh0,
                                int64_t oh1, int64_t r, int64_t q, int64_t c0, int64_t o0, __m256i last,
                                float* acc_rows) {
  const TapWindow tap = InsideTap(g, r, q, oh0, oh1);
  if (tap.oh0 >= tap.oh1 || tap.ow0 >= tap.ow1) return;
  const int64_t top = tap.top, left = tap.left, ow0 = tap.ow0, ow1 = tap.ow1;
  oh0 = tap.oh0;
  oh1 = tap.oh1;
  const __m256i all = _mm256_set1_epi32(-1);
  __m256 acc[CB][NV];
  for (int ci = 0; ci < CB; ++ci) {
    for (int v = 0; v < NV; ++v) acc[ci][v] = _mm256_maskload_ps(acc_rows + ci * g.o + o0 + 8 * v, v == NV - 1 ? last : all);
  }
  const int64_t xstep = g.sw * g.c, o = g.o;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const float* xp = xi + ((oh * g.sh + top) * g.w + ow0 * g.sw + left) * g.c + c0;
    const float* dp = dyi + (oh * g.wo + ow0) * o + o0;
    for (int64_t ow = ow0; ow < ow1; ++ow, xp += xstep, dp += o) {
      __m256 d[NV];
      for (int v = 0; v < NV; ++v) d[v] = _mm256_maskload_ps(dp + 8 * v, v == NV - 1 ? last : all);
      for (int ci = 0; ci < CB; ++ci) {
        const __m256 xv = _mm256_broadcast_ss(xp + ci);
        for (int v = 0; v < NV; ++v) acc[ci][v] = _mm256_fmadd_ps(xv, d[v], acc[ci][v]);
      }
    }
  }
  for (int ci = 0; ci < CB; ++ci) {
    for (int v = 0; v < NV; ++v) _mm256_maskstore_ps(acc_rows + ci * g.o + o0 + 8 * v, v == NV - 1 ? last : all, acc[ci][v]);
  }
}

// CB (1 to 6: 12 result vectors, two of dy and the broadcast in the 16 registers) as a template argument
template <int NV>
CJ_AVX2 void KernelGradTileAvx2Cb(int cb, const KernelGradGeometry& g, const float* xi, const float* dyi, int64_t oh0,
                                  int64_t oh1, int64_t r, int64_t q, int64_t c0, int64_t o0, __m256i last,
                                  float* acc_rows) {
  switch (cb) {
    case 6: return KernelGradTileAvx2<6, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
    case 5: return KernelGradTileAvx2<5, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
    case 4: return KernelGradTileAvx2<4, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
    case 3: return KernelGradTileAvx2<3, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
    case 2: return KernelGradTileAvx2<2, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
    default: return KernelGradTileAvx2<1, NV>(g, xi, dyi, oh0, oh1, r, q, c0, o0, last, acc_rows);
  }
}

// KernelGradImages on AVX2: 16 output channels (6 input channels) a pass
CJ_AVX2 void KernelGradImagesAvx2(const KernelGradGeometry& g, const float* x, const float* dy, int64_t b0,
                                  int64_t b1, float* scratch) {
  const int64_t rows = std::max<int64_t>(1, 128 / g.wo);
  constexpr int64_t kCstep = 6;
  for (int64_t b = b0; b < b1; ++b) {
    const float* xi = x + b * g.h * g.w * g.c;
    const float* dyi = dy + b * g.ho * g.wo * g.o;
    for (int64_t oh0 = 0; oh0 < g.ho; oh0 += rows) {
      const int64_t oh1 = std::min(g.ho, oh0 + rows);
      for (int64_t o0 = 0; o0 < g.o; o0 += 16) {
        const int64_t cols = std::min<int64_t>(16, g.o - o0);
        for (int64_t r = 0; r < g.kh; ++r) {
          for (int64_t q = 0; q < g.kw; ++q) {
            float* tap_rows = scratch + (r * g.kw + q) * g.c * g.o;
            for (int64_t c0 = 0; c0 < g.c; c0 += kCstep) {
              const int cb = static_cast<int>(std::min<int64_t>(kCstep, g.c - c0));
              if (cols > 8) {
                KernelGradTileAvx2Cb<2>(cb, g, xi, dyi, oh0, oh1, r, q, c0, o0, FirstLanes8(cols - 8),
                                        tap_rows + c0 * g.o);
              } else {
                KernelGradTileAvx2Cb<1>(cb, g, xi, dyi, oh0, oh1, r, q, c0, o0, FirstLanes8(cols),
                                        tap_rows + c0 * g.o);
              }
            }
          }
        }
      }
    }
  }
}

ffi::Error F32ConvKernelGradNhwc(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                 ffi::ResultBuffer<ffi::F32> out, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                 int64_t dh, int64_t dw, int64_t ph, int64_t pw) {
  const auto xd = x.dimensions();
  const auto yd = dy.dimensions();
  const auto od = out->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || od.size() != 2 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 ||
      dw < 1 || ph < 0 || pw < 0 || yd[0] != xd[0] || od[0] != yd[3] || od[1] != kh * kw * xd[3]) {
    return ffi::Error::InvalidArgument(
        "candlejax f32 conv kernel gradient: x must be (B, H, W, C), dy (B, Ho, Wo, O), the result "
        "(O, kh * kw * C) and the geometry positive");
  }
  const int64_t span_h = xd[1] + 2 * ph - dh * (kh - 1) - 1, span_w = xd[2] + 2 * pw - dw * (kw - 1) - 1;
  if (span_h < 0 || span_w < 0 || yd[1] != span_h / sh + 1 || yd[2] != span_w / sw + 1) {
    return ffi::Error::InvalidArgument("candlejax f32 conv kernel gradient: dy must be (B, Ho, Wo, O) for this geometry");
  }
  if (ActiveIsa() < 1) {
    return ffi::Error::InvalidArgument("candlejax f32 conv kernel gradient: needs an AVX2 or AVX-512 CPU");
  }
  const KernelGradGeometry g{xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], kh, kw, sh, sw, dh, dw, ph, pw};
  const int64_t bsz = xd[0], k = kh * kw * g.c, size = k * g.o;
  const int64_t workers = Workers(pool, bsz * g.ho * g.wo * size);
  // chunks of images, each with its own scratch (one per worker, up to four per worker within ~8 MB),
  // claimed as the pool's threads free up
  const int64_t chunks = std::max(std::min(bsz, workers),
                                  std::min({bsz, workers == 1 ? int64_t{1} : 4 * workers, (int64_t{8} << 20) / (4 * size)}));
  const int64_t per = (bsz + chunks - 1) / chunks;
  std::vector<float> scratch(static_cast<size_t>(chunks * size), 0.0f);
  const float* xp = x.typed_data();
  const float* dyp = dy.typed_data();
  float* sp = scratch.data();  // a worker that starts after the return finds no chunk left
  const bool avx2 = ActiveIsa() == 1;
  ParallelChunks(pool, workers - 1, bsz, 1, chunks, [=](int64_t b0, int64_t b1) {
    if (avx2) {
      KernelGradImagesAvx2(g, xp, dyp, b0, b1, sp + (b0 / per) * size);
    } else {
      KernelGradImages(g, xp, dyp, b0, b1, sp + (b0 / per) * size);
    }
  });
  // the chunks' sums, transposed to (O, K) in 32 x 32 blocks (a row-by-row transpose of a wide
  // layer's gradient, 512 x 4608 values, missed the cache at every store)
  float* o = out->typed_data();
  constexpr int64_t kT = 32;
  for (int64_t i0 = 0; i0 < k; i0 += kT) {
    for (int64_t j0 = 0; j0 < g.o; j0 += kT) {
      const int64_t i1 = std::min(k, i0 + kT), j1 = std::min(g.o, j0 + kT);
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t i = i0; i < i1; ++i) {
          float s = 0.0f;
          for (int64_t c = 0; c < chunks; ++c) s += sp[c * size + i * g.o + j];
          o[j * k + i] = s;
        }
      }
    }
  }
  return ffi::Error::Success();
}

// --- attention ------------------------------------------------------------------------------------
// softmax(q k^T * scale + bias) v for each (batch, head), f32, on the same register tiles: a head's
// keys are packed as weight panels (its scores are a product with them), its values as panels of
// the value product (32 value columns, K-major: a slice of v as it is); 12 query rows at a time,
// their scores and softmax in this thread's scratch. q, k, v and the output are (B, H, S, D) or
// (B, S, H, D) (`bshd`), read and written in place; bias (B or 1, Skv) is added to the scores. Keys
// may come transposed, (B, H, D, Skv) (`keys_t`, a decoding cache's layout): their panels are then
// slices of each row. With one pass of query rows (S <= 12, a decoding step), whole panels that are
// slices of k or v are read where they lie instead of being copied (packing would move all of them
// for one use). k and v may also be a stacked cache's (L, B, H, Skv, D) buffers, of which the s32
// `layer` operand picks one in place (otherwise `layer` is unused).

// exp(x) for x <= 0 (scores minus their row maximum): 2^n * p(r), r = x - n ln 2 in [-ln2/2, ln2/2];
// 0 below -87 (masked keys get no weight), NaN stays NaN. ln 2 in two parts, then p's coefficients
// (highest power first; p(r) = 1 + r + r^2 * (c0 r^5 + ... + c5))
constexpr float kExpFloor = -87.0f, kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

CJ_AVX512 inline __m512 ExpNonPositive(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpFloor), _CMP_NLT_UQ);
  x = _mm512_max_ps(_mm512_set1_ps(kExpFloor), x);  // the second operand is returned for a NaN
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[i]));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, n));
}

// rows x skv scores (row stride ld) -> softmax(scores * scale + bias), in place
CJ_AVX512 void SoftmaxRows(float* sc, int64_t rows, int64_t skv, int64_t ld, float scale, const float* bias) {
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < rows; ++i) {
    float* row = sc + i * ld;
    __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < skv; j += 16) {
      const __mmask16 keep = FirstLanes(skv - j);
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(keep, row + j), vscale);
      if (bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(keep, bias + j));
      _mm512_mask_storeu_ps(row + j, keep, v);
      vmax = _mm512_mask_max_ps(vmax, keep, vmax, v);
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t j = 0; j < skv; j += 16) {
      const __mmask16 keep = FirstLanes(skv - j);
      const __m512 e = ExpNonPositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(keep, row + j), m));
      _mm512_mask_storeu_ps(row + j, keep, e);
      vsum = _mm512_mask_add_ps(vsum, keep, vsum, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
    for (int64_t j = 0; j < skv; j += 16) {
      const __mmask16 keep = FirstLanes(skv - j);
      _mm512_mask_storeu_ps(row + j, keep, _mm512_mul_ps(_mm512_maskz_loadu_ps(keep, row + j), inv));
    }
  }
}

// one (batch, head) pair's q, k, v, output and bias rows
struct HeadData {
  const float *q, *k, *v, *bias;
  float* out;
};

// skv: the keys attended, the first skv of the buffers' skv_stride (keys past the last one that
// any bias row leaves unmasked get no weight, so they are not read)
struct AttentionGeometry {
  const float *q, *k, *v, *bias;
  float* out;
  int64_t b, h, s, skv, d, dv, bias_rows;
  bool bshd, keys_t;
  float scale;
  int64_t skv_stride;

  // pair u of the B x H (batch, head) pairs, in the (B, H, S, D) or (B, S, H, D) layout
  HeadData Head(int64_t u) const {
    const int64_t bi = u / h, hi = u % h, n = skv_stride;
    return {q + (bshd ? (bi * s * h + hi) * d : u * s * d),
            k + (keys_t ? u * d * n : bshd ? (bi * n * h + hi) * d : u * n * d),
            v + (bshd ? (bi * n * h + hi) * dv : u * n * dv),
            bias == nullptr ? nullptr : bias + (bias_rows == 1 ? 0 : bi) * n,
            out + (bshd ? (bi * s * h + hi) * dv : u * s * dv)};
  }
};

// rows x 32 values of a K-major operand (element (r, j) at src[r * ld + j]) as a packed panel: the
// first `cols` columns, zeros past them
CJ_AVX512 void PackKMajor(const float* src, int64_t rows, int64_t ld, int64_t cols, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    _mm512_store_ps(out + r * kPanel, _mm512_maskz_loadu_ps(FirstLanes(cols), src + r * ld));
    _mm512_store_ps(out + r * kPanel + 16, _mm512_maskz_loadu_ps(FirstLanes(cols - 16), src + r * ld + 16));
  }
}

// A head's key and value panels for the tiles. Key panel p holds keys p*32.. as 32 values per step
// along D, value panel p value columns p*32.. as 32 values per key (rows of v, in order). With one
// pass of query rows, whole panels that are slices of kᵀ or v are read where they lie (their row
// stride: Skv or v's); the others are packed into this thread's scratch by the ISA's own routines.
struct HeadPanels {
  const AttentionGeometry& g;
  bool one_pass;
  float *kp, *vp;  // packed key and value panels
  int64_t ldk, ldv;

  HeadPanels(const AttentionGeometry& geometry, int64_t tile_rows)
      : g(geometry), one_pass(geometry.s <= tile_rows),
        kp(Scratch(1, Panels(geometry.skv) * geometry.d * kPanel)),
        vp(Scratch(2, Panels(geometry.dv) * geometry.skv * kPanel)),
        ldk(geometry.bshd ? geometry.h * geometry.d : geometry.d),
        ldv(geometry.bshd ? geometry.h * geometry.dv : geometry.dv) {}
  static int64_t Panels(int64_t n) { return (n + kPanel - 1) / kPanel; }
  bool KeyInPlace(int64_t p) const { return g.keys_t && one_pass && g.skv - p * kPanel >= kPanel; }
  bool ValueInPlace(int64_t p) const { return one_pass && g.dv - p * kPanel >= kPanel; }
  const float* Key(const HeadData& head, int64_t p) const {
    return KeyInPlace(p) ? head.k + p * kPanel : kp + p * g.d * kPanel;
  }
  int64_t KeyStride(int64_t p) const { return KeyInPlace(p) ? g.skv_stride : kPanel; }
  const float* Value(const HeadData& head, int64_t p) const {
    return ValueInPlace(p) ? head.v + p * kPanel : vp + p * g.skv * kPanel;
  }
  int64_t ValueStride(int64_t p) const { return ValueInPlace(p) ? ldv : kPanel; }
  // pack_panel: PackPanel's contract (rows of k as they are); pack_k_major: PackKMajor's
  void Pack(const HeadData& head, void (*pack_panel)(const float*, int64_t, int64_t, float*, int64_t),
            void (*pack_k_major)(const float*, int64_t, int64_t, int64_t, float*)) const {
    for (int64_t p = 0; p < Panels(g.skv); ++p) {
      const int64_t keys = std::min<int64_t>(kPanel, g.skv - p * kPanel);
      if (KeyInPlace(p)) continue;
      if (g.keys_t) {
        pack_k_major(head.k + p * kPanel, g.d, g.skv_stride, keys, kp + p * g.d * kPanel);
      } else {
        pack_panel(head.k + p * kPanel * ldk, g.d, keys, kp + p * g.d * kPanel, ldk);
      }
    }
    for (int64_t p = 0; p < Panels(g.dv); ++p) {
      if (ValueInPlace(p)) continue;
      pack_k_major(head.v + p * kPanel, g.skv, ldv, std::min<int64_t>(kPanel, g.dv - p * kPanel),
                   vp + p * g.skv * kPanel);
    }
  }
};

// heads [u0, u1) of the B x H (batch, head) pairs
CJ_AVX512 void AttentionHeads(const AttentionGeometry& g, int64_t u0, int64_t u1) {
  const HeadPanels panels(g, kTile);
  const int64_t kpanels = HeadPanels::Panels(g.skv), vpanels = HeadPanels::Panels(g.dv), ld_sc = kpanels * kPanel;
  float* sc = Scratch(3, kTile * ld_sc);
  const int64_t ldq = panels.ldk, ldo = panels.ldv;  // q's row stride is k's, the output's v's
  const Epilogue none{nullptr, false};
  for (int64_t u = u0; u < u1; ++u) {
    const HeadData head = g.Head(u);
    panels.Pack(head, PackPanel, PackKMajor);
    auto rows = [&](auto mr, int64_t i) {
      constexpr int MR = decltype(mr)::value;
      for (int64_t p = 0; p < kpanels; ++p) {
        Tile<MR>(DenseRows{head.q, ldq}, i, 1, g.d, panels.Key(head, p), sc, ld_sc, p * kPanel,
                 std::min<int64_t>(kPanel, g.skv - p * kPanel), none, nullptr, 0, panels.KeyStride(p));
      }
      SoftmaxRows(sc, MR, g.skv, ld_sc, g.scale, head.bias);
      for (int64_t p = 0; p < vpanels; ++p) {
        Tile<MR>(DenseRows{sc, ld_sc}, 0, 1, g.skv, panels.Value(head, p), head.out + i * ldo, ldo, p * kPanel,
                 std::min<int64_t>(kPanel, g.dv - p * kPanel), none, nullptr, 0, panels.ValueStride(p));
      }
    };
    int64_t i = 0;
    for (; i + kTile <= g.s; i += kTile) rows(std::integral_constant<int, kTile>{}, i);
    for (; i + 4 <= g.s; i += 4) rows(std::integral_constant<int, 4>{}, i);
    for (; i < g.s; ++i) rows(std::integral_constant<int, 1>{}, i);
  }
}

// --- attention on AVX2 + FMA CPUs: AttentionHeads on the AVX2 tiles (6 query rows at a time) ------

// ExpNonPositive on 8 lanes (the same constants): 2^n built in the exponent field (n >= -126 for x >= -87)
CJ_AVX2 inline __m256 ExpNonPositiveAvx2(__m256 x) {
  const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(kExpFloor), _CMP_NLT_UQ);
  x = _mm256_max_ps(_mm256_set1_ps(kExpFloor), x);  // the second operand is returned for a NaN
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[i]));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
}

CJ_AVX2 inline float ReduceMax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

CJ_AVX2 inline float ReduceAdd8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// the numerators of SoftmaxRows on AVX2, exp(scores * scale + bias - row max), with 1 / their row
// sums in inv (the value product is scaled by them after it); lanes past skv are neither read nor written
CJ_AVX2 void SoftmaxNumeratorsAvx2(float* sc, int64_t rows, int64_t skv, int64_t ld, float scale, const float* bias,
                                   float* inv) {
  // whole vectors in the loops, a last 1-7 lanes masked (a masked store is slow on AMD CPUs)
  const int64_t whole = skv / 8 * 8;
  const __m256i tail = FirstLanes8(skv - whole);
  const __m256 vscale = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < rows; ++i) {
    float* row = sc + i * ld;
    __m256 vmax = ninf;
    for (int64_t j = 0; j < whole; j += 8) {
      __m256 v = _mm256_mul_ps(_mm256_loadu_ps(row + j), vscale);
      if (bias != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
      _mm256_storeu_ps(row + j, v);
      vmax = _mm256_max_ps(vmax, v);
    }
    if (whole < skv) {
      __m256 v = _mm256_mul_ps(_mm256_maskload_ps(row + whole, tail), vscale);
      if (bias != nullptr) v = _mm256_add_ps(v, _mm256_maskload_ps(bias + whole, tail));
      _mm256_maskstore_ps(row + whole, tail, v);
      vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(ninf, v, _mm256_castsi256_ps(tail)));
    }
    const __m256 m = _mm256_set1_ps(ReduceMax8(vmax));
    __m256 vsum = _mm256_setzero_ps();
    for (int64_t j = 0; j < whole; j += 8) {
      const __m256 e = ExpNonPositiveAvx2(_mm256_sub_ps(_mm256_loadu_ps(row + j), m));
      _mm256_storeu_ps(row + j, e);
      vsum = _mm256_add_ps(vsum, e);
    }
    if (whole < skv) {
      const __m256 e = _mm256_and_ps(ExpNonPositiveAvx2(_mm256_sub_ps(_mm256_maskload_ps(row + whole, tail), m)),
                                     _mm256_castsi256_ps(tail));
      _mm256_maskstore_ps(row + whole, tail, e);
      vsum = _mm256_add_ps(vsum, e);
    }
    inv[i] = 1.0f / ReduceAdd8(vsum);
  }
}

// row r of the rows x cols values at y (row stride ld) times scale[r]
CJ_AVX2 void ScaleRowsAvx2(float* y, int rows, int64_t cols, int64_t ld, const float* scale) {
  for (int r = 0; r < rows; ++r) {
    float* row = y + r * ld;
    const __m256 s = _mm256_set1_ps(scale[r]);
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), s));
    if (j < cols) {
      const __m256i keep = FirstLanes8(cols - j);
      _mm256_maskstore_ps(row + j, keep, _mm256_mul_ps(_mm256_maskload_ps(row + j, keep), s));
    }
  }
}

// PackKMajor on AVX2
CJ_AVX2 void PackKMajorAvx2(const float* src, int64_t rows, int64_t ld, int64_t cols, float* out) {
  const __m256i keep[4] = {FirstLanes8(cols), FirstLanes8(cols - 8), FirstLanes8(cols - 16), FirstLanes8(cols - 24)};
  for (int64_t r = 0; r < rows; ++r) {
    for (int v = 0; v < 4; ++v) _mm256_store_ps(out + r * kPanel + 8 * v, _mm256_maskload_ps(src + r * ld + 8 * v, keep[v]));
  }
}

// AttentionHeads on the AVX2 tiles
CJ_AVX2 void AttentionHeadsAvx2(const AttentionGeometry& g, int64_t u0, int64_t u1) {
  const HeadPanels panels(g, kTileAvx2);
  const int64_t kpanels = HeadPanels::Panels(g.skv), vpanels = HeadPanels::Panels(g.dv), ld_sc = kpanels * kPanel;
  float* sc = Scratch(3, kTileAvx2 * ld_sc);
  const int64_t ldq = panels.ldk, ldo = panels.ldv;
  const Epilogue none{nullptr, false};
  for (int64_t u = u0; u < u1; ++u) {
    const HeadData head = g.Head(u);
    panels.Pack(head, PackPanelAvx2, PackKMajorAvx2);
    auto rows = [&](auto mr, int64_t i) {
      constexpr int MR = decltype(mr)::value;
      for (int64_t p = 0; p < kpanels; ++p) {
        TileAvx2<MR>(DenseRows{head.q, ldq}, i, 1, g.d, panels.Key(head, p), sc, ld_sc, p * kPanel,
                     std::min<int64_t>(kPanel, g.skv - p * kPanel), none, nullptr, 0, panels.KeyStride(p));
      }
      float inv[MR];
      SoftmaxNumeratorsAvx2(sc, MR, g.skv, ld_sc, g.scale, head.bias, inv);
      for (int64_t p = 0; p < vpanels; ++p) {
        TileAvx2<MR>(DenseRows{sc, ld_sc}, 0, 1, g.skv, panels.Value(head, p), head.out + i * ldo, ldo, p * kPanel,
                     std::min<int64_t>(kPanel, g.dv - p * kPanel), none, nullptr, 0, panels.ValueStride(p));
      }
      ScaleRowsAvx2(head.out + i * ldo, MR, g.dv, ldo, inv);  // the softmax's division, on dv outputs
    };
    int64_t i = 0;
    for (; i + kTileAvx2 <= g.s; i += kTileAvx2) rows(std::integral_constant<int, kTileAvx2>{}, i);
    switch (g.s - i) {
      case 5: rows(std::integral_constant<int, 5>{}, i); break;
      case 4: rows(std::integral_constant<int, 4>{}, i); break;
      case 3: rows(std::integral_constant<int, 3>{}, i); break;
      case 2: rows(std::integral_constant<int, 2>{}, i); break;
      case 1: rows(std::integral_constant<int, 1>{}, i); break;
      default: break;
    }
  }
}

ffi::Error F32Attention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::S32> layer,
                        ffi::ResultBuffer<ffi::F32> out, float scale, int64_t bshd, int64_t keys_t) {
  const auto qd = q.dimensions(), od = out->dimensions();
  ffi::Span<const int64_t> kdims = k.dimensions(), vdims = v.dimensions();
  const float *kp = k.typed_data(), *vp = v.typed_data();
  // k and v of 5 dimensions: every layer's buffers (L, B, H, S, D) of a stacked decoding cache, of
  // which `layer` is read in place
  if (kdims.size() == 5 || vdims.size() == 5) {
    const int32_t l = *layer.typed_data();
    if (kdims.size() != 5 || vdims.size() != 5 || kdims[0] != vdims[0] || bshd || keys_t) {
      return ffi::Error::InvalidArgument("candlejax f32 attention: stacked k and v must both be (L, B, H, S, D)");
    }
    if (l < 0 || l >= kdims[0]) {
      return ffi::Error::InvalidArgument("candlejax f32 attention: layer " + std::to_string(l) +
                                         " out of range for " + std::to_string(kdims[0]) + " stacked layers");
    }
    kdims = kdims.last(4), vdims = vdims.last(4);
    kp += l * kdims[0] * kdims[1] * kdims[2] * kdims[3];
    vp += l * vdims[0] * vdims[1] * vdims[2] * vdims[3];
  }
  if (qd.size() != 4 || od.size() != 4 || kdims.size() < 2 || kdims.size() > 4 || vdims.size() < 2 ||
      vdims.size() > 4 || (bshd && (kdims.size() != 4 || vdims.size() != 4))) {
    return ffi::Error::InvalidArgument("candlejax f32 attention: q and the result must be 4-D, k and v 4-D "
                                       "or (B, H, S, D) without its size-1 batch and head dimensions");
  }
  // (batch, heads, seq, dim) whatever the layout
  const int64_t b = qd[0], h = bshd ? qd[2] : qd[1], s = bshd ? qd[1] : qd[2], d = qd[3];
  if (keys_t && bshd) {
    return ffi::Error::InvalidArgument("candlejax f32 attention: transposed keys need the (B, H, S, D) layout");
  }
  // k and v of a (B, H, S, D) attention may come without their size-1 batch / head dimensions (a
  // decoding cache's buffers as stored: a reshape adding them would make XLA copy the buffer)
  auto as4 = [&](ffi::Span<const int64_t> dims) {
    std::array<int64_t, 4> r{b, h, dims[dims.size() - 2], dims[dims.size() - 1]};
    if (dims.size() == 4) r = {dims[0], dims[1], dims[2], dims[3]};
    if (dims.size() == 3) r[b == 1 ? 1 : 0] = dims[0], r[b == 1 ? 0 : 1] = 1;
    const int64_t dropped = (b == 1) + (h == 1);
    if (dims.size() < 4 && static_cast<int64_t>(4 - dims.size()) != dropped) r[0] = -1;  // no such view
    return r;
  };
  const std::array<int64_t, 4> kd = as4(kdims), vd = as4(vdims);
  const int64_t skv = keys_t ? kd[3] : bshd ? kd[1] : kd[2], dv = vd[3], kdim = keys_t ? kd[2] : kd[3];
  const bool heads_ok = (bshd ? kd[2] == h && vd[2] == h && vd[1] == skv && od[1] == s && od[2] == h
                              : kd[1] == h && vd[1] == h && vd[2] == skv && od[1] == h && od[2] == s);
  if (!heads_ok || kd[0] != b || vd[0] != b || kdim != d || od[0] != b || od[3] != dv || skv < 1) {
    return ffi::Error::InvalidArgument("candlejax f32 attention: q, k, v, result shapes do not match");
  }
  const int64_t bias_n = static_cast<int64_t>(bias.element_count());
  if (bias_n != 0 && bias_n != skv && bias_n != b * skv) {
    return ffi::Error::InvalidArgument("candlejax f32 attention: bias must be (B, Skv), (1, Skv) or empty");
  }
  if (ActiveIsa() < 1) return ffi::Error::InvalidArgument("candlejax f32 attention: needs an AVX2 or AVX-512 CPU");
  // keys past the last one that some bias row leaves unmasked (-inf: no weight) are not read: a
  // decoding cache's slots past the position, however many the cache holds
  int64_t used = skv;
  if (bias_n != 0) {
    const float* bp = bias.typed_data();
    used = 1;
    for (int64_t r = 0; r < bias_n / skv; ++r) {
      int64_t j = skv;
      while (j > used && bp[r * skv + j - 1] == -std::numeric_limits<float>::infinity()) --j;
      used = std::max(used, j);
    }
  }
  const AttentionGeometry g{q.typed_data(), kp, vp, bias_n ? bias.typed_data() : nullptr,
                            out->typed_data(), b, h, s, used, d, dv, bias_n == skv ? 1 : b, bshd != 0,
                            keys_t != 0, scale, skv};
  const int64_t units = b * h, work = units * s * used * (d + dv);
  const int64_t workers = Workers(pool, work);
  auto heads = ActiveIsa() == 1 ? AttentionHeadsAvx2 : AttentionHeads;
  if (workers <= 1 || units < 2) {
    heads(g, 0, units);
  } else {
    ParallelChunks(pool, workers - 1, units, 1, std::min<int64_t>(units, workers * 4),
                   [=](int64_t u0, int64_t u1) { heads(g, u0, u1); });
  }
  return ffi::Error::Success();
}

ffi::Error F32Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                     ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[1]) {
    return ffi::Error::InvalidArgument("candlejax f32 matmul: x must be (M, K) and w (N, K) f32 with the same K");
  }
  const int64_t m = xd[0], k = xd[1], n = wd[0];
  const auto od = out->dimensions();
  if (od.size() != 2 || od[0] != m || od[1] != n) {
    return ffi::Error::InvalidArgument("candlejax f32 matmul: result must be (M, N)");
  }
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = out->typed_data();
  const bool avx512 = ActiveIsa() >= 2;
  const int64_t threads = pool.num_threads() - 1;  // helpers besides the caller, as the blocked product
  if (avx512 && m > kFewRows) {
    const Blocked<DenseRows> g{DenseRows{xp, k}, 1, k, m, n, wp, yp, Epilogue{nullptr, false}};
    F32BlockedAvx512(pool, Workers(pool, m * k * n), g, m * k * 4);
    return ffi::Error::Success();
  }
  if (ActiveIsa() == 1 && m > kFewRows) {
    const Blocked<DenseRows> g{DenseRows{xp, k}, 1, k, m, n, wp, yp, Epilogue{nullptr, false}};
    F32BlockedAvx2(pool, Workers(pool, m * k * n), g, m * k * 4);
    return ffi::Error::Success();
  }
  auto rows = avx512 ? F32RowsAvx512 : F32RowsPortable;
  if (threads <= 0 || m * k * n < (int64_t{1} << 17) || n < 64) {
    rows(xp, wp, m, k, n, 0, n, yp);
    return ffi::Error::Success();
  }
  ParallelRows(pool, threads, n, [=](int64_t r0, int64_t r1) { rows(xp, wp, m, k, n, r0, r1, yp); });
  return ffi::Error::Success();
}

// y (M, N) = x (M, K) @ W^T for a weight already in the blocked product's panel layout:
// panels (P, K, 32) with panels[p, c, i] = W[32 p + i, c] and zeros past row N (P = ceil(N / 32)).
// Every row count takes the register tiles (AVX-512 or AVX2); without AVX2 a plain loop.
ffi::Error F32MatmulPacked(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> panels,
                           ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions();
  const auto pd = panels.dimensions();
  const auto od = out->dimensions();
  if (xd.size() != 2 || pd.size() != 3 || pd[1] != xd[1] || pd[2] != kPanel || od.size() != 2 || od[0] != xd[0] ||
      od[1] > pd[0] * kPanel || od[1] <= (pd[0] - 1) * kPanel) {
    return ffi::Error::InvalidArgument(
        "candlejax f32 packed matmul: x must be (M, K), the panels (ceil(N / 32), K, 32) and the result (M, N)");
  }
  const int64_t m = xd[0], k = xd[1], n = od[1];
  const float* xp = x.typed_data();
  const float* pp = panels.typed_data();
  float* yp = out->typed_data();
  if (ActiveIsa() == 1) {
    Blocked<DenseRows> g{DenseRows{xp, k}, 1, k, m, n, nullptr, yp, Epilogue{nullptr, false}};
    g.panels = pp;
    F32BlockedAvx2(pool, Workers(pool, m * k * n), g, m * k * 4);
    return ffi::Error::Success();
  }
  if (ActiveIsa() < 1) {
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const float* col = pp + (j / kPanel) * k * kPanel + j % kPanel;
        float s = 0.0f;
        for (int64_t c = 0; c < k; ++c) s += xp[i * k + c] * col[c * kPanel];
        yp[i * n + j] = s;
      }
    }
    return ffi::Error::Success();
  }
  Blocked<DenseRows> g{DenseRows{xp, k}, 1, k, m, n, nullptr, yp, Epilogue{nullptr, false}};
  g.panels = pp;
  F32BlockedAvx512(pool, Workers(pool, m * k * n), g, m * k * 4);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CandlejaxF32MatmulPacked, F32MatmulPacked,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CandlejaxF32Matmul, F32Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CandlejaxF32Attention, F32Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("bshd")
                                  .Attr<int64_t>("keys_t"));

namespace {
// a convolution handler's geometry attributes: kernel, stride, dilation and padding, each (h, w)
template <typename Binding>
auto ConvGeometry(Binding binding) {
  return std::move(binding).template Attr<int64_t>("kh")
      .template Attr<int64_t>("kw")
      .template Attr<int64_t>("sh")
      .template Attr<int64_t>("sw")
      .template Attr<int64_t>("dh")
      .template Attr<int64_t>("dw")
      .template Attr<int64_t>("ph")
      .template Attr<int64_t>("pw");
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CandlejaxF32ConvNhwc, F32ConvNhwc,
                              ConvGeometry(ffi::Ffi::Bind()
                                               .Ctx<ffi::ThreadPool>()
                                               .Arg<ffi::Buffer<ffi::F32>>()
                                               .Arg<ffi::Buffer<ffi::F32>>()
                                               .Arg<ffi::Buffer<ffi::F32>>()
                                               .Ret<ffi::Buffer<ffi::F32>>())
                                  .Attr<int64_t>("act"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CandlejaxF32ConvKernelGradNhwc, F32ConvKernelGradNhwc,
                              ConvGeometry(ffi::Ffi::Bind()
                                               .Ctx<ffi::ThreadPool>()
                                               .Arg<ffi::Buffer<ffi::F32>>()
                                               .Arg<ffi::Buffer<ffi::F32>>()
                                               .Ret<ffi::Buffer<ffi::F32>>()));
