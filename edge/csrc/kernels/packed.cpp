// See packed.h for the weight layout. For output column n and input row m,
//   y[m, n] = sum_g ( s[n, g] * dot(x[m, g], q[n, g]) + b[n, g] * sum(x[m, g]) ).
// On x86 the activations are quantized per block of 32 to int16 (scale = absmax / 32767) and the dot
// products run in 32-bit integer lanes (AVX-512 VNNI's vpdpwssd, or madd), one output column per lane, then
// one fp32 multiply-add per block with the block's scales. int16 keeps the activations' rounding (1 part in
// 65536 of a block's range) far below the weights' own: llama.cpp's int8 activations (1 in 254) change
// SmolLM2's greedy answers, int16 does not. Elsewhere the same layout runs as plain fp32 loops.

#include "packed.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "packed_vec.h"
#include "pool.h"


namespace edge {

namespace {

inline int block_bytes(int bits) { // one panel, one block of 32 along K
  return PANEL * 32 * bits / 8;
}

// An IEEE fp16 value (its bits) as fp32, exactly.
float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, frac = h & 0x3FF;
  if (exp == 0) { // zero or subnormal: frac * 2^-24
    const float v = std::ldexp(static_cast<float>(frac), -24);
    return sign ? -v : v;
  }
  const uint32_t bits = sign | (exp == 31 ? 0x7F800000u | (frac << 13) : ((exp + 112) << 23) | (frac << 13));
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Scale or bias i of a packed weight's table (s or b), whichever its type.
float scale_or_bias(const void* p, bool fp16, size_t i) {
  return fp16 ? half_bits_to_float(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

// The products of one call: each runs over its panels ("units": a panel, or half of one for 8-lane vectors).
struct Products {
  const PackedWeight* w;
  float* const* y;
  int count, M;
};

#if EDGE_X86
// ---- x86: int16 activations, integer dot products --------------------------------------------------------

} // namespace

struct QuantX {
  std::vector<int16_t> q; // M x K, in the natural order: (x[2t], x[2t+1]) is one 32-bit pair
  std::vector<float> scale; // M x K/32
  std::vector<float> xsum; // M x G: group sums of the quantized values (see below)
};

void quantx_prepare(QuantX& out, const float*, int M, int K) {
  const size_t at_least = static_cast<size_t>(M) * K; // grown only: a layer's products of different K share it
  if (out.q.size() < at_least) out.q.resize(at_least);
  if (out.scale.size() < at_least / 32) out.scale.resize(at_least / 32);
  if (out.xsum.size() < at_least / 32) out.xsum.resize(at_least / 32); // for any group size (32 at least)
}

// Quantize x per block of 32. The group sums of x are replaced by those of its quantized values: the result
// is then exactly (quantized x) @ w.T, where the bias term cancels most of the activations' rounding (the
// weights' integers are offset, all positive; summing the exact x here would leave that error uncancelled).
// Per block: d = absmax / 32767, q = x * (1 / d) rounded to the nearest (even) integer, as nearbyint does,
// and the sum of the q; 16 floats at a time with AVX-512, 8 with AVX2. A scalar loop (once the AVX2 path,
// bit for bit the same) took 1.5 us for a row of 1536 against 0.6 on a Zen 3, ~100 us of a SmolLM2 position.
void quantize_x(const float* x, int K, int gs, QuantX& out, int m0, int m1, int g0, int g1) {
  const int blocks = K / 32, G = K / gs, per_group = gs / 32;
  for (int m = m0; m < m1; ++m)
    for (int j = g0 * per_group; j < g1 * per_group; ++j) {
      if (j % per_group == 0) out.xsum[static_cast<size_t>(m) * G + j / per_group] = 0.f;
      const float* xb = x + static_cast<size_t>(m) * K + j * 32;
#if EDGE_AVX512
      const __m512 a = _mm512_loadu_ps(xb), b = _mm512_loadu_ps(xb + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
      const float d = amax / 32767.f, inv = d > 0.f ? 1.f / d : 0.f;
      out.scale[static_cast<size_t>(m) * blocks + j] = d;
      const __m512 vinv = _mm512_set1_ps(inv);
      const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, vinv));
      const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, vinv));
      int16_t* to = out.q.data() + static_cast<size_t>(m) * K + j * 32;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(to), _mm512_cvtepi32_epi16(qa));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(to + 16), _mm512_cvtepi32_epi16(qb));
      const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
      out.xsum[static_cast<size_t>(m) * G + j / per_group] += d * static_cast<float>(sum);
#else
      const __m256 sign = _mm256_set1_ps(-0.f);
      __m256 v[4], top = _mm256_setzero_ps();
      for (int i = 0; i < 4; ++i) top = _mm256_max_ps(top, _mm256_andnot_ps(sign, v[i] = _mm256_loadu_ps(xb + 8 * i)));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
      const float d = amax / 32767.f, inv = d > 0.f ? 1.f / d : 0.f;
      out.scale[static_cast<size_t>(m) * blocks + j] = d;
      const __m256 vinv = _mm256_set1_ps(inv);
      __m256i q[4], sum = _mm256_setzero_si256();
      for (int i = 0; i < 4; ++i) sum = _mm256_add_epi32(sum, q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vinv)));
      int16_t* to = out.q.data() + static_cast<size_t>(m) * K + j * 32;
      for (int i = 0; i < 4; i += 2) // packs works per 128-bit lane: put the 64-bit pieces back in order
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(to + 8 * i),
                            _mm256_permute4x64_epi64(_mm256_packs_epi32(q[i], q[i + 1]), 0xD8));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
      out.xsum[static_cast<size_t>(m) * G + j / per_group] += d * static_cast<float>(_mm_cvtsi128_si32(s4));
#endif
    }
}

namespace {

using packed::Vec;

constexpr int UNITS_PER_PANEL = PANEL / Vec::LANES, UNIT_COLUMNS = Vec::LANES;
// How far ahead a tile asks for its weights (and their scales and biases): in each of its C streams (one
// per unit), and near its last block in the next tile's, which start C panels on. The hardware prefetcher
// stops at 4 KB pages and does not keep up: without this a verify pass over 8 positions ran at half its
// in-cache speed once SmolLM2's weights (~100 MB) came from memory. Asking past a tile's end for the next
// panel, as this once did, fetched what a tile of several units reads itself and left the next tile to start
// cold; single rows asked for nothing. Measured with the weights in memory (1536 x 576, 4-bit, 2 cores): one
// row 1.45x faster, 2 to 4 rows 1.5x to 1.8x; SmolLM2's forward pass over 1 / 2 / 4 positions 12% / 14% / 17%
// faster (plain decoding 16%).
constexpr int PREFETCH_BYTES = 2048;

// One t (0..15) of a block: acc[r][c] += (q[2t], q[2t+1]) . (x[2t], x[2t+1]) for every row and unit, in
// program order (`Vec::pin`).
template <int R, int C>
inline void accumulate(Vec::I (&acc)[R][C], Vec::I (&v)[C], const int16_t* const (&xq)[R], int t) {
  for (int c = 0; c < C; ++c) Vec::pin(v[c]);
  for (int r = 0; r < R; ++r) {
    const Vec::I x = Vec::pair(xq[r] + 2 * t);
    for (int c = 0; c < C; ++c) acc[r][c] = Vec::dot(acc[r][c], v[c], x);
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) Vec::pin(acc[r][c]);
}

// R input rows from m0, C units from u0, over all of K. Each unpacked weight vector serves all R rows; each
// (row, unit) pair sums its blocks in one fp32 chain in block order, the same for every R and C.
template <int BITS, int R, int C, typename S>
void tile(const PackedWeight& w, const QuantX& qx, float* y, int m0, int u0) {
  const int blocks = w.K / 32, G = w.K / w.gs, per_group = w.gs / 32, bb = block_bytes(BITS);
  const uint8_t* wp[C];
  const S *sp[C], *bp[C]; // scales and biases: float, or uint16_t holding fp16
  for (int c = 0; c < C; ++c) {
    const int panel = (u0 + c) / UNITS_PER_PANEL, half = (u0 + c) % UNITS_PER_PANEL;
    wp[c] = w.w + static_cast<size_t>(panel) * blocks * bb + half * Vec::LANES * 4;
    sp[c] = static_cast<const S*>(w.s) + static_cast<size_t>(panel) * G * PANEL + half * Vec::LANES;
    bp[c] = static_cast<const S*>(w.b) + static_cast<size_t>(panel) * G * PANEL + half * Vec::LANES;
  }
  Vec::F f[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) f[r][c] = Vec::fzero();
  const Vec::I mask = Vec::words(BITS == 4 ? 0x000F : 0x00FF);
  for (int j = 0; j < blocks; ++j) {
    // PREFETCH_BYTES on; past this tile's last block, into the next tile's streams (`beyond`: the panels
    // between, which this tile reads itself)
    const int jb = j + PREFETCH_BYTES / bb, beyond = jb >= blocks ? std::max(1, C / UNITS_PER_PANEL) - 1 : 0;
    const size_t at = static_cast<size_t>(jb + beyond * blocks) * bb;
    const int ahead = jb / per_group + beyond * G;
    for (int c = 0; c < C; ++c) {
      for (int line = 0; line < bb; line += 64) __builtin_prefetch(wp[c] + at + line);
      __builtin_prefetch(sp[c] + ahead * PANEL);
      __builtin_prefetch(bp[c] + ahead * PANEL);
    }
    const int16_t* xq[R];
    for (int r = 0; r < R; ++r) xq[r] = qx.q.data() + static_cast<size_t>(m0 + r) * w.K + j * 32;
    Vec::I acc[R][C], z[C], v[C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = Vec::zero();
    // the chunks unrolled: rolled, GCC kept the sums in other registers from one chunk to the next and moved
    // them back each time (SmolLM2's forward pass over 6 or 12 positions ran 4% slower, over 4 or 8 1-3%)
    if constexpr (BITS == 4) {
#pragma GCC unroll 4
      for (int ch = 0; ch < 4; ++ch) {
        for (int c = 0; c < C; ++c) z[c] = Vec::load(wp[c] + static_cast<size_t>(j) * bb + ch * 64);
        for (int c = 0; c < C; ++c) v[c] = Vec::band(z[c], mask);
        accumulate<R, C>(acc, v, xq, 4 * ch);
        for (int c = 0; c < C; ++c) v[c] = Vec::band(Vec::shr<4>(z[c]), mask);
        accumulate<R, C>(acc, v, xq, 4 * ch + 1);
        for (int c = 0; c < C; ++c) v[c] = Vec::band(Vec::shr<8>(z[c]), mask);
        accumulate<R, C>(acc, v, xq, 4 * ch + 2);
        for (int c = 0; c < C; ++c) v[c] = Vec::shr<12>(z[c]);
        accumulate<R, C>(acc, v, xq, 4 * ch + 3);
      }
    } else {
#pragma GCC unroll 8
      for (int ch = 0; ch < 8; ++ch) {
        for (int c = 0; c < C; ++c) z[c] = Vec::load(wp[c] + static_cast<size_t>(j) * bb + ch * 64);
        for (int c = 0; c < C; ++c) v[c] = Vec::band(z[c], mask);
        accumulate<R, C>(acc, v, xq, 2 * ch);
        for (int c = 0; c < C; ++c) v[c] = Vec::shr<8>(z[c]);
        accumulate<R, C>(acc, v, xq, 2 * ch + 1);
      }
    }
    const int g = j / per_group;
    for (int c = 0; c < C; ++c) {
      const Vec::F sv = Vec::floats(sp[c] + g * PANEL);
      for (int r = 0; r < R; ++r)
        f[r][c] = Vec::fma(Vec::scaled(acc[r][c], qx.scale[static_cast<size_t>(m0 + r) * blocks + j]), sv, f[r][c]);
    }
    if ((j + 1) % per_group == 0)
      for (int c = 0; c < C; ++c) {
        const Vec::F bv = Vec::floats(bp[c] + g * PANEL);
        for (int r = 0; r < R; ++r)
          f[r][c] = Vec::fma(bv, Vec::fill(qx.xsum[static_cast<size_t>(m0 + r) * G + g]), f[r][c]);
      }
  }
  for (int c = 0; c < C; ++c) {
    const int n0 = (u0 + c) * Vec::LANES, count = std::min(Vec::LANES, w.N - n0);
    if (count <= 0) continue; // padding columns of the last panel
    for (int r = 0; r < R; ++r) {
      float* out = y + static_cast<size_t>(m0 + r) * w.N + n0;
      if (count == Vec::LANES) {
        Vec::store(out, f[r][c]);
      } else {
        float tmp[Vec::LANES];
        Vec::store(tmp, f[r][c]);
        std::copy(tmp, tmp + count, out);
      }
    }
  }
}

// Units [u0, u1) of one product for R-row groups from m0, Vec::units(R) at a time.
template <int BITS, int R, typename S>
void row_group(const PackedWeight& w, const QuantX& qx, float* y, int m0, int u0, int u1) {
  constexpr int C = Vec::units(R);
  int u = u0;
  for (; u + C <= u1; u += C) tile<BITS, R, C, S>(w, qx, y, m0, u);
  for (; u < u1; ++u) tile<BITS, R, 1, S>(w, qx, y, m0, u);
}

// `rows` (1..ROWS) rows from m as one group: each weight vector is unpacked once for all of them.
template <int BITS, typename S, int R = 1>
void group(int rows, const PackedWeight& w, const QuantX& qx, float* y, int m, int u, int end) {
  if constexpr (R <= Vec::ROWS) {
    if (rows == R) return row_group<BITS, R, S>(w, qx, y, m, u, end);
    group<BITS, S, R + 1>(rows, w, qx, y, m, u, end);
  }
}

// The weights stream from memory once: for each TILE units, every group of rows runs over them (the later
// groups read them from cache). The rows are split into groups of (nearly) equal size, at most ROWS each: a
// verify pass over 13 positions is 7 + 6 rows, not 12 + 1 (a lone row costs nearly as much as a group).
template <int BITS, typename S>
void units(const PackedWeight& w, const QuantX& qx, float* y, int M, int u0, int u1) {
  const int groups = (M + Vec::ROWS - 1) / Vec::ROWS;
  for (int u = u0; u < u1; u += Vec::TILE) {
    const int end = std::min(u1, u + Vec::TILE);
    for (int g = 0, m = 0; g < groups; ++g) {
      const int rows = M / groups + (g < M % groups);
      group<BITS, S>(rows, w, qx, y, m, u, end);
      m += rows;
    }
  }
}

void run_units(const Products& p, const QuantX& qx, int i, int u0, int u1) {
  const PackedWeight& w = p.w[i];
  if (w.fp16)
    w.bits == 4 ? units<4, uint16_t>(w, qx, p.y[i], p.M, u0, u1) : units<8, uint16_t>(w, qx, p.y[i], p.M, u0, u1);
  else
    w.bits == 4 ? units<4, float>(w, qx, p.y[i], p.M, u0, u1) : units<8, float>(w, qx, p.y[i], p.M, u0, u1);
}

int units_of(const PackedWeight& w) {
  return (w.N + PANEL - 1) / PANEL * UNITS_PER_PANEL;
}

#else
// ---- portable: fp32 loops over the same layout (the compiler vectorises the 16 columns) -------------------

} // namespace

struct QuantX {
  const float* x;
  std::vector<float> xsum; // M x G: group sums of x
};

void quantx_prepare(QuantX& out, const float* x, int M, int K) {
  out.x = x;
  if (out.xsum.size() < static_cast<size_t>(M) * K / 32) out.xsum.resize(static_cast<size_t>(M) * K / 32);
}

void quantize_x(const float* x, int K, int gs, QuantX& out, int m0, int m1, int g0, int g1) {
  const int G = K / gs;
  for (int m = m0; m < m1; ++m)
    for (int g = g0; g < g1; ++g) {
      float& sum = out.xsum[static_cast<size_t>(m) * G + g];
      sum = 0.f;
      for (int k = g * gs; k < (g + 1) * gs; ++k) sum += x[static_cast<size_t>(m) * K + k];
    }
}

namespace {

// One panel's block as integers, q[k][l] (k-index within the block, column l of the panel).
void decode_block(const uint8_t* src, int bits, float (&q)[32][PANEL]) {
  for (int l = 0; l < PANEL; ++l)
    for (int k = 0; k < 32; ++k) {
      const int t = k / 2, e = k % 2, per = bits == 4 ? 4 : 2, chunk = t / per, sub = t % per;
      uint16_t word;
      std::memcpy(&word, src + chunk * 64 + (2 * l + e) * 2, 2);
      q[k][l] = static_cast<float>((word >> (sub * bits)) & ((1 << bits) - 1));
    }
}

void run_units(const Products& p, const QuantX& qx, int i, int u0, int u1) {
  const PackedWeight& w = p.w[i];
  const int blocks = w.K / 32, G = w.K / w.gs, per_group = w.gs / 32, M = p.M;
  std::vector<float> f(static_cast<size_t>(M) * PANEL);
  float q[32][PANEL];
  for (int panel = u0; panel < u1; ++panel) {
    std::fill(f.begin(), f.end(), 0.f);
    const size_t at = static_cast<size_t>(panel) * G * PANEL;
    for (int j = 0; j < blocks; ++j) {
      decode_block(w.w + (static_cast<size_t>(panel) * blocks + j) * block_bytes(w.bits), w.bits, q);
      const int g = j / per_group;
      for (int m = 0; m < M; ++m) {
        const float* xb = qx.x + static_cast<size_t>(m) * w.K + j * 32;
        float d[PANEL] = {};
        for (int k = 0; k < 32; ++k)
          for (int l = 0; l < PANEL; ++l) d[l] += xb[k] * q[k][l];
        float* fm = f.data() + static_cast<size_t>(m) * PANEL;
        for (int l = 0; l < PANEL; ++l) fm[l] += scale_or_bias(w.s, w.fp16, at + g * PANEL + l) * d[l];
        if ((j + 1) % per_group == 0)
          for (int l = 0; l < PANEL; ++l)
            fm[l] += scale_or_bias(w.b, w.fp16, at + g * PANEL + l) * qx.xsum[static_cast<size_t>(m) * G + g];
      }
    }
    const int n0 = panel * PANEL, count = std::min(PANEL, w.N - n0);
    for (int m = 0; m < M; ++m)
      std::copy(f.data() + static_cast<size_t>(m) * PANEL, f.data() + static_cast<size_t>(m) * PANEL + count,
                p.y[i] + static_cast<size_t>(m) * w.N + n0);
  }
}

constexpr int UNIT_COLUMNS = PANEL;

int units_of(const PackedWeight& w) {
  return (w.N + PANEL - 1) / PANEL;
}
#endif

// Products smaller than this (multiply-adds) run on the calling thread.
constexpr long PARALLEL_MACS = 64l << 10;

} // namespace

int product_units(const PackedWeight& w) {
  return units_of(w);
}

int unit_columns() {
  return UNIT_COLUMNS;
}

void packed_gemm_units(const QuantX& qx, int M, const PackedWeight* ws, float* const* ys, int count, long lo,
                       long hi) {
  const Products p{ws, ys, count, M};
  long base = 0;
  for (int i = 0; i < count && lo < hi; ++i) {
    const long n = units_of(ws[i]);
    if (lo < base + n) {
      const long end = std::min(hi, base + n);
      run_units(p, qx, i, static_cast<int>(lo - base), static_cast<int>(end - base));
      lo = end;
    }
    base += n;
  }
}

QuantX& thread_quantx(int slot) {
  thread_local QuantX scratch[QUANTX_SLOTS];
  return scratch[slot];
}

void packed_gemm(const float* x, int M, const PackedWeight& w, float* y) {
  QuantX& qx = thread_quantx(); // the workers must see the caller's
  quantx_prepare(qx, x, M, w.K);
  quantize_x(x, w.K, w.gs, qx, 0, M, 0, w.K / w.gs);
  // each core a contiguous range of the units
  const long units = units_of(w);
  const long macs = static_cast<long>(w.N) * w.K * M;
  const int parts = macs > PARALLEL_MACS ? static_cast<int>(std::min<long>(pool_size(), units)) : 1;
  pool_run(parts, [&](int t) { packed_gemm_units(qx, M, &w, &y, 1, units * t / parts, units * (t + 1) / parts); });
}

void dequantize_rows(const PackedWeight& w, const int32_t* ids, int count, float* out) {
  const int blocks = w.K / 32, G = w.K / w.gs, bb = block_bytes(w.bits), per = 16 / w.bits;
  const int mask = (1 << w.bits) - 1;
  for (int r = 0; r < count; ++r) {
    const int panel = ids[r] / PANEL, lane = ids[r] % PANEL;
    float* row = out + static_cast<size_t>(r) * w.K;
    for (int j = 0; j < blocks; ++j) {
      const uint8_t* block = w.w + (static_cast<size_t>(panel) * blocks + j) * bb;
      const size_t g = (static_cast<size_t>(panel) * G + j * 32 / w.gs) * PANEL + lane;
      const float scale = scale_or_bias(w.s, w.fp16, g), bias = scale_or_bias(w.b, w.fp16, g);
      for (int k = 0; k < 32; ++k) { // pair t = k / 2, element e = k % 2: field t % per of chunk t / per
        const int t = k / 2, e = k % 2;
        uint16_t word;
        std::memcpy(&word, block + (t / per) * 64 + (2 * lane + e) * 2, 2);
        // rounded once for the product and once for the sum, as MLX's dequantize (no fused multiply-add)
        const volatile float q = static_cast<float>((word >> ((t % per) * w.bits)) & mask) * scale;
        row[j * 32 + k] = q + bias;
      }
    }
  }
}

const char* simd_name() {
#if EDGE_AVX512 && defined(__AVX512VNNI__)
  return "avx512-vnni";
#elif EDGE_AVX512
  return "avx512";
#elif EDGE_X86 && (defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__)))
  return "avx2+vnni";
#elif EDGE_X86
  return "avx2";
#else
  return "portable";
#endif
}

} // namespace edge
