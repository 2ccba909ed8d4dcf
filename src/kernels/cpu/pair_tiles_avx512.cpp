// The pair-tile kernels for AVX512-BF16 (internal.h's pair tiles): a batch's rows against a BF16
// weight kept as tiles of 16 rows by column pairs, 16 outputs in a register's lanes, and the
// activations paired for them. Compiled for that target here only; linear.cpp calls them on a CPU
// that has it.
#include "kernels/cpu/internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>

#include "core/error.h"

#define DSV3_AVX512_TARGET "avx512f,avx512bw,avx512vl,avx512bf16"
#include "kernels/cpu/avx512_target_begin.h"

namespace dsv3::kernels {
namespace {

constexpr std::int64_t kLanes = 16;

// Pair tiles (internal.h): R activation rows against T tiles (16 outputs each) a pass, one 64-byte
// load a tile and one broadcast activation pair a row per step, R x T accumulators with 16 outputs
// in their lanes, so no horizontal sums. Every output is one chain of vdpbf16ps over the pairs in
// order, whatever R and T: a row's logits are the same bits alone and in any batch. One row reads
// four tiles side by side (four streams kept the AMD prefetchers at the read bandwidth where one
// tile at a time with a single chain did not); 16 rows read one tile, the next 8 KiB fetched ahead,
// and with each weight load feeding 16 products the stream runs under them. bench-1b's output head
// (129280 x 1024), 2-vCPU AMD EPYC, `DSV3_HEAD_TILES=1|0 dsv3 bench --batch 1,16 --profile` in turn,
// 2 runs each: 6.0-7.5 ms a batch-16 step against 9.2-9.9 for the row-major 4 x 6 blocks (whose
// first pass over each chunk waits on memory while the others compute), and 3.7-4.8 ms at batch 1
// against 4.6-4.8.
template <int R>
constexpr int kPairTilesAtOnce = R <= 4 ? 4 : R <= 8 ? 2 : 1;
constexpr std::int64_t kPairTilesAhead = 8 << 10;

template <int R, int T>
void pair_tiles_block(const std::uint32_t* x, const std::uint32_t* tiles, std::int64_t pairs, float* y,
                      std::int64_t ld) {
  const std::int64_t tile_dwords = pairs * kPairTileRows;
  __m512 acc[T][R];
  #pragma GCC unroll 16
  for (int t = 0; t < T; ++t)
    #pragma GCC unroll 16
    for (int m = 0; m < R; ++m) acc[t][m] = _mm512_setzero_ps();
  for (std::int64_t p = 0; p < pairs; ++p) {
    __m512bh w[T];
    #pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      const std::uint32_t* at = tiles + t * tile_dwords + p * kPairTileRows;
      if constexpr (T == 1) _mm_prefetch(reinterpret_cast<const char*>(at) + kPairTilesAhead, _MM_HINT_T0);
      w[t] = (__m512bh)_mm512_load_si512(at);
    }
    #pragma GCC unroll 16
    for (int m = 0; m < R; ++m) {
      const auto xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[p * R + m]));
      #pragma GCC unroll 16
      for (int t = 0; t < T; ++t) acc[t][m] = _mm512_dpbf16_ps(acc[t][m], w[t], xv);
    }
  }
  #pragma GCC unroll 16
  for (int t = 0; t < T; ++t)
    #pragma GCC unroll 16
    for (int m = 0; m < R; ++m) _mm512_storeu_ps(y + m * ld + t * kPairTileRows, acc[t][m]);
}

// R rows (one group of pair_tile_activations) against tiles [t_begin, t_end), writing outputs
// [n_begin, n_end) of y (row m at y + m * ld): a tile that straddles either end goes through a
// buffer, whose other outputs are dropped.
template <int R>
void pair_tiles_rows(const std::uint32_t* x, const PackedWeight& packed, std::int64_t t_begin, std::int64_t t_end,
                     std::int64_t n_begin, std::int64_t n_end, float* y, std::int64_t ld) {
  constexpr int T = kPairTilesAtOnce<R>;
  const std::int64_t pairs = pair_tile_pairs(packed.cols);
  const auto tile = [&](std::int64_t t) { return packed.data + t * pairs * kPairTileRows; };
  const auto whole = [&](std::int64_t t) { return t * kPairTileRows >= n_begin && (t + 1) * kPairTileRows <= n_end; };
  for (std::int64_t t = t_begin; t < t_end;) {
    if constexpr (T > 1) {
      if (t + T <= t_end && whole(t) && whole(t + T - 1)) {
        pair_tiles_block<R, T>(x, tile(t), pairs, y + t * kPairTileRows, ld);
        t += T;
        continue;
      }
    }
    if (whole(t)) {
      pair_tiles_block<R, 1>(x, tile(t), pairs, y + t * kPairTileRows, ld);
    } else {
      alignas(64) float part[R * kPairTileRows];
      pair_tiles_block<R, 1>(x, tile(t), pairs, part, kPairTileRows);
      const std::int64_t first = std::max(n_begin, t * kPairTileRows), last = std::min(n_end, (t + 1) * kPairTileRows);
      for (int m = 0; m < R; ++m)
        std::copy(part + m * kPairTileRows + (first - t * kPairTileRows),
                  part + m * kPairTileRows + (last - t * kPairTileRows), y + m * ld + first);
    }
    ++t;
  }
}

using PairTilesRows = void (*)(const std::uint32_t*, const PackedWeight&, std::int64_t, std::int64_t, std::int64_t,
                               std::int64_t, float*, std::int64_t);
template <std::size_t... I>
constexpr std::array<PairTilesRows, sizeof...(I)> pair_tiles_table(std::index_sequence<I...>) {
  return {pair_tiles_rows<static_cast<int>(I) + 1>...};
}
constexpr auto kPairTilesRows = pair_tiles_table(std::make_index_sequence<kPairTileRows>{});

}  // namespace

// Tiles a few at a time (kPairTileChunk, 128 KiB of BF16 at K = 1024), each against every group of
// 16 rows: a batch wider than 16 reads them from L2 after the first group.
constexpr std::int64_t kPairTileChunk = 4;

void gemv_pair_tiles_avx512(const std::uint32_t* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin,
                     std::int64_t n_end, float* y) {
  const PackedWeight* packed = w.packed_copy();
  if (!packed) fail("{}: pair-tile products without its pair tiles", w.name);
  const std::int64_t pairs = pair_tile_pairs(w.cols);
  const std::int64_t t_end = (n_end + kPairTileRows - 1) / kPairTileRows;
  for (std::int64_t t0 = n_begin / kPairTileRows; t0 < t_end; t0 += kPairTileChunk) {
    const std::int64_t t1 = std::min(t_end, t0 + kPairTileChunk);
    for (std::int64_t m0 = 0; m0 < rows; m0 += kPairTileRows) {
      const std::int64_t count = std::min(kPairTileRows, rows - m0);
      kPairTilesRows[static_cast<std::size_t>(count - 1)](x + m0 * pairs, *packed, t0, t1, n_begin, n_end,
                                                          y + m0 * w.rows, w.rows);
    }
  }
}

// pair_tile_activations (internal.h) in registers: a group's 16 rows' next 32 columns rounded to
// BF16 pairs (vcvtne2ps2bf16: dword k of a row's vector is its pair k), the 16 x 16 dwords
// transposed, and each pair's dwords of the group's rows stored as one run. The portable loop
// stored them a dword at a time: 1-2 us a 16-row linear, a third of a 16-row absorbed product.
void pair_tile_activations_avx512(const float* x, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::uint32_t* out) {
  const std::int64_t pairs = pair_tile_pairs(cols);
  for (std::int64_t m0 = 0; m0 < rows; m0 += kPairTileRows) {
    const std::int64_t group_rows = std::min(kPairTileRows, rows - m0);
    const auto row_mask = static_cast<__mmask16>((1u << group_rows) - 1);
    std::uint32_t* to = out + m0 * pairs;
    for (std::int64_t c = 0; c < cols; c += 2 * kLanes) {
      const auto lanes = [&](std::int64_t first) {
        const std::int64_t left = cols - first;
        return left >= kLanes ? static_cast<__mmask16>(0xffff)
                              : left > 0 ? static_cast<__mmask16>((1u << left) - 1) : static_cast<__mmask16>(0);
      };
      const __mmask16 low_mask = lanes(c), high_mask = lanes(c + kLanes);
      __m512i r[kPairTileRows];
      #pragma GCC unroll 16
      for (int m = 0; m < kPairTileRows; ++m) {
        if (m >= group_rows) {
          r[m] = _mm512_setzero_si512();
          continue;
        }
        const float* row = x + (m0 + m) * ld + c;
        r[m] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(high_mask, row + kLanes),
                                            _mm512_maskz_loadu_ps(low_mask, row));
      }
      // Within 128-bit lanes: t, then u[4g + j] lane L = rows 4g .. 4g + 3 of pair 4L + j.
      __m512i t[kPairTileRows], u[kPairTileRows];
      #pragma GCC unroll 16
      for (int i = 0; i < kPairTileRows; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
      }
      #pragma GCC unroll 16
      for (int g = 0; g < 4; ++g) {
        u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
      }
      // Across lanes: pair 4L + j takes lane L of u[j], u[4 + j], u[8 + j], u[12 + j].
      const std::int64_t count = std::min<std::int64_t>(kLanes, pairs - c / 2);
      #pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512i a0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44), a1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xEE);
        const __m512i b0 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44),
                      b1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xEE);
        const __m512i pair[4] = {_mm512_shuffle_i32x4(a0, b0, 0x88), _mm512_shuffle_i32x4(a0, b0, 0xDD),
                                 _mm512_shuffle_i32x4(a1, b1, 0x88), _mm512_shuffle_i32x4(a1, b1, 0xDD)};
        #pragma GCC unroll 4
        for (int L = 0; L < 4; ++L)
          if (4 * L + j < count) _mm512_mask_storeu_epi32(to + (c / 2 + 4 * L + j) * group_rows, row_mask, pair[L]);
      }
    }
  }
}

void pair_tile_products_avx512(const std::uint32_t* x, std::int64_t rows, const PackedWeight& tiles, float* y,
                        std::int64_t ld) {
  const std::int64_t pairs = pair_tile_pairs(tiles.cols);
  for (std::int64_t m0 = 0; m0 < rows; m0 += kPairTileRows) {
    const std::int64_t count = std::min(kPairTileRows, rows - m0);
    kPairTilesRows[static_cast<std::size_t>(count - 1)](x + m0 * pairs, tiles, 0, (tiles.rows + kPairTileRows - 1) / kPairTileRows,
                                                        0, tiles.rows, y + m0 * ld, ld);
  }
}

}  // namespace dsv3::kernels

#include "kernels/cpu/avx512_target_end.h"

#endif
