// Shared by candlejax's native CPU kernels (csrc/*.cc, built into one library): the run-time choice
// of instruction set and the split of a kernel's rows over XLA's intra-op thread pool.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

#define CJ_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CJ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))

namespace candlejax_native {

namespace ffi = xla::ffi;

// 0 portable, 1 AVX2, 2 AVX-512: the path this CPU runs (after any cap, candlejax_native_set_isa)
int ActiveIsa();

struct Shared {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// Software prefetch for loops that stream weight rows from memory once (one activation row: a
// decode step): the rows kAheadBytes past the group being computed are requested into L1 as each
// group starts, and the first kAheadBytes of the chunk at its start. The hardware prefetchers alone
// left a call of a few hundred KB (a layer's product) at 5-10 GB/s; with it, SmolLM2's quantized
// decode on the 2-core AMD host went 88-101 -> 118-122 tok/s. Prefetches never fault; they stay
// within the chunk [row r0, row r1).
struct RowPrefetch {
  static constexpr int64_t kAheadBytes = 2048;
  const char* base;
  const char* end;
  size_t row_bytes;

  RowPrefetch(const void* w, size_t rb, int64_t r0, int64_t r1)
      : base(static_cast<const char*>(w)), end(static_cast<const char*>(w) + r1 * rb), row_bytes(rb) {
    Lines(base + r0 * rb, base + r0 * rb + kAheadBytes);
  }
  // before computing rows r .. r + rows - 1
  void Next(int64_t r, int64_t rows = 4) const {
    const char* p = base + r * row_bytes + kAheadBytes;
    Lines(p, p + rows * row_bytes);
  }
  void Lines(const char* p, const char* pe) const {
    for (pe = std::min(pe, end); p < pe; p += 64) _mm_prefetch(p, _MM_HINT_T0);
  }
};

// fn(r0, r1) over [0, n) in `chunks` pieces of whole multiples of `unit` rows, claimed by the caller
// and the pool's workers from one counter; the caller waits only for chunks already claimed (being
// computed), so a busy pool never blocks it. fn must capture by value: a worker that starts after
// the call has returned finds no chunk left but still holds its copy.
template <typename RowsFn>
void ParallelChunks(ffi::ThreadPool& pool, int64_t threads, int64_t n, int64_t unit, int64_t chunks, RowsFn rows_fn) {
  chunks = std::max<int64_t>(1, std::min(chunks, (n + unit - 1) / unit));
  const int64_t per = ((n + chunks - 1) / chunks + unit - 1) / unit * unit;
  auto shared = std::make_shared<Shared>();
  auto work_fn = [=](Shared* s) {
    for (;;) {
      const int64_t c = s->next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      const int64_t r0 = std::min(n, c * per), r1 = std::min(n, r0 + per);
      if (r0 < r1) rows_fn(r0, r1);
      s->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(threads, chunks - 1);
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([shared, work_fn]() { work_fn(shared.get()); });
  }
  work_fn(shared.get());
  // spin briefly, then yield the core: a loaded machine may have descheduled a worker mid-chunk
  for (int spins = 0; shared->done.load(std::memory_order_acquire) < chunks; ++spins) {
    if (spins < 2000) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
  }
}

// rows_fn(r0, r1) over [0, n) in chunks of whole groups of four rows (see ParallelChunks)
template <typename RowsFn>
void ParallelRows(ffi::ThreadPool& pool, int64_t threads, int64_t n, RowsFn rows_fn) {
  ParallelChunks(pool, threads, n, 4, std::min<int64_t>((threads + 1) * 4, n / 16), rows_fn);
}

}  // namespace candlejax_native
