// Candle's sampling arithmetic on the CPU, as XLA FFI handlers (registered by
// candlejax/quantized/native.py), so that a seeded draw lands on the token Candle's LogitsProcessor
// picks: its softmax (candle_nn::ops::softmax_last_dim: the row's max, libm's expf, Candle's vector
// sum, a division) and rand's WeightedIndex<f32> (running sums in index order, the first one above
// the chosen point). Both need Candle's order of f32 additions: XLA's reductions and cumulative sums
// associate differently, which moves the boundaries between tokens by more than a token's width
// over a large vocabulary.
#include <cmath>
#include <cstdint>

#include "native_common.h"

namespace ffi = xla::ffi;

namespace {

// Candle's f32 vec_sum on x86-64 (candle-core/src/cpu: its AVX path, which Candle's builds and
// wheels take): 4 x 8 lanes accumulated over blocks of 32 values, the lanes folded pairwise, then
// the values past the last whole block added in order
float CandleVecSum(const float* v, int64_t n) {
  const int64_t whole = n & ~int64_t{31};
  float acc[4][8] = {};
  for (int64_t i = 0; i < whole; i += 32) {
    for (int j = 0; j < 4; ++j) {
      for (int l = 0; l < 8; ++l) acc[j][l] += v[i + 8 * j + l];
    }
  }
  float a[8];
  for (int l = 0; l < 8; ++l) a[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
  float t[4];
  for (int l = 0; l < 4; ++l) t[l] = a[l] + a[l + 4];
  float sum = (t[0] + t[1]) + (t[2] + t[3]);
  for (int64_t i = whole; i < n; ++i) sum += v[i];
  return sum;
}

// softmax of each row of x (rows, n): exp(x - max) / sum, summed as Candle's vec_sum
ffi::Error CandleSoftmax(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> out) {
  const auto d = x.dimensions();
  if (d.size() < 1 || d[d.size() - 1] < 1) {
    return ffi::Error::InvalidArgument("candlejax candle_softmax: x must be (..., n) f32 with n >= 1");
  }
  const int64_t n = d[d.size() - 1];
  const int64_t rows = static_cast<int64_t>(x.element_count()) / n;
  const float* xp = x.typed_data();
  float* yp = out->typed_data();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * n;
    float* yr = yp + r * n;
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; ++i) mx = std::fmax(mx, xr[i]);
    for (int64_t i = 0; i < n; ++i) yr[i] = std::exp(xr[i] - mx);
    const float sum = CandleVecSum(yr, n);
    for (int64_t i = 0; i < n; ++i) yr[i] /= sum;
  }
  return ffi::Error::Success();
}

// rand's WeightedIndex<f32> draw for each row of w (rows, n) and its uniform u in [0, 1): the point
// u * total (total summed in index order) and the number of running sums w[0] + ... + w[i], i < n - 1,
// at or below it; -1 where the weights sum to 0 (rand refuses such weights)
ffi::Error WeightedIndex(ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> u, ffi::ResultBuffer<ffi::S32> out) {
  const auto d = w.dimensions();
  if (d.size() < 1 || d[d.size() - 1] < 1) {
    return ffi::Error::InvalidArgument("candlejax weighted_index: w must be (..., n) f32 with n >= 1");
  }
  const int64_t n = d[d.size() - 1];
  const int64_t rows = static_cast<int64_t>(w.element_count()) / n;
  if (static_cast<int64_t>(u.element_count()) != rows) {
    return ffi::Error::InvalidArgument("candlejax weighted_index: u must have one value per row of w");
  }
  const float* wp = w.typed_data();
  const float* up = u.typed_data();
  int32_t* op = out->typed_data();
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = wp + r * n;
    float total = 0.0f;
    for (int64_t i = 0; i < n; ++i) total += wr[i];
    if (!(total > 0.0f)) {
      op[r] = -1;
      continue;
    }
    const float chosen = up[r] * total;
    float running = 0.0f;
    int64_t k = 0;
    for (; k < n - 1; ++k) {
      running += wr[k];
      if (running > chosen) break;
    }
    op[r] = static_cast<int32_t>(k);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CandlejaxCandleSoftmax, CandleSoftmax,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CandlejaxWeightedIndex, WeightedIndex,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
