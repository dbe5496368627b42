// See decoder.h. Everything in fp32 but the KV cache (fp16: attention reads every cached key and value each
// step, and in fp32 it was bandwidth-bound, 4.2 ms a token at 2,000 tokens of context on SmolLM2); the products
// go through packed_gemm (packed.cpp).

#include "decoder.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "pool.h"
#include "vec.h"

namespace edge {

namespace {

struct Ptrs {
  const float *h, *attn_norm, *mlp_norm, *cos, *sin;
  half_t *k_cache, *v_cache;
  float* out;
  PackedWeight q[7];
};

void rms_norm(const float* x, const float* w, float* y, int M, int D, float eps) {
  for (int m = 0; m < M; ++m) {
    const float* xr = x + static_cast<size_t>(m) * D;
    // 8 running sums in a fixed order (they vectorise; a compiler reduction's grouping could follow the
    // buffer's alignment, and a position must norm the same in a verify pass as alone)
    double part[8] = {}, ss = 0;
    int i = 0;
    for (; i + 8 <= D; i += 8)
      for (int l = 0; l < 8; ++l) part[l] += static_cast<double>(xr[i + l]) * xr[i + l];
    for (; i < D; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    for (int l = 0; l < 8; ++l) ss += part[l];
    const float r = 1.f / std::sqrt(static_cast<float>(ss / D) + eps);
    for (i = 0; i < D; ++i) y[static_cast<size_t>(m) * D + i] = w[i] * (xr[i] * r);
  }
}

// rotate-half RoPE on one head vector at position pos
inline void rope(float* v, const float* cos, const float* sin, int half) {
  for (int j = 0; j < half; ++j) {
    const float a = v[j], b = v[j + half], c = cos[j], s = sin[j];
    v[j] = a * c - b * s;
    v[j + half] = b * c + a * s;
  }
}

constexpr int SPAN = 16; // positions per score tile, values per mixing tile
// Keys are cached in blocks of this many positions, (head_dim, KEY_BLOCK) each: a score tile reads one block,
// head_dim x 32 contiguous bytes. Transposed whole, (head_dim, capacity), a tile read head_dim pieces a row of
// the cache apart, which at a power-of-two capacity all fell in one L1 set and evicted each other.
constexpr int KEY_BLOCK = SPAN;

constexpr int PIECES = SPAN / W; // vectors of the machine's width (vec.h) to a span

// Scores of RT query rows (q already scaled) at positions j0..j0+15 (j0 a multiple of 16): sum over e of
// q[r][e] * key[j][e], accumulated in registers in e order (the same for any RT). Keys come in blocks of 16
// positions (KEY_BLOCK), (hd, 16) each. May read past the last position (within the capacity, a multiple of
// 16): those scores are never used.
template <int RT>
inline void score_tile(const float* q, int hd, const half_t* kt, int j0, float* scores, int stride) {
  fwv acc[RT][PIECES] = {};
  kt += static_cast<size_t>(j0) * hd;
  for (int e = 0; e < hd; ++e) {
    fwv k[PIECES];
    for (int p = 0; p < PIECES; ++p) k[p] = loadw(kt + e * KEY_BLOCK + p * W);
    for (int r = 0; r < RT; ++r) {
      const float qe = q[static_cast<size_t>(r) * hd + e];
      for (int p = 0; p < PIECES; ++p) acc[r][p] += qe * k[p];
    }
  }
  for (int r = 0; r < RT; ++r)
    std::memcpy(scores + static_cast<size_t>(r) * stride + j0, acc[r], sizeof acc[r]);
}

// out[r][e0..e0+16) = sum over positions j < n of w[r][j] * v[j][e0..e0+16), for RT rows, in j order (the
// weights past a row's own positions are zero).
template <int RT>
inline void mix_tile(const float* w, int stride, int n, const half_t* v, int hd, int e0, float* out) {
  fwv acc[RT][PIECES] = {};
  for (int j = 0; j < n; ++j) {
    fwv x[PIECES];
    for (int p = 0; p < PIECES; ++p) x[p] = loadw(v + static_cast<size_t>(j) * hd + e0 + p * W);
    for (int r = 0; r < RT; ++r) {
      const float wj = w[static_cast<size_t>(r) * stride + j];
      for (int p = 0; p < PIECES; ++p) acc[r][p] += wj * x[p];
    }
  }
  for (int r = 0; r < RT; ++r) std::memcpy(out + static_cast<size_t>(r) * hd + e0, acc[r], sizeof acc[r]);
}

template <int RT>
void mix(const float* w, int stride, int n, const half_t* v, int hd, float* out) {
  for (int e0 = 0; e0 < hd; e0 += SPAN) mix_tile<RT>(w, stride, n, v, hd, e0, out);
}

// query rows per register tile: each key and value vector is read once for them. The sums of 8 rows fill 8 of
// AVX-512's 32 registers; with AVX2 they would be 16 of its 16, so 6 rows (12, a key's or value's 2, the row's
// weight).
constexpr int ROW_TILE = W == 16 ? 8 : W == 8 ? 6 : 3;

// score_tile / mix for a tile of `rt` (1..ROW_TILE) rows: the rows left after whole tiles run as one tile
// too (a verify pass over 9 positions has 27 query rows per KV head; row by row, the rest cost as much as
// the tiles did)
template <int RT = 1>
void score_rows(int rt, const float* q, int hd, const half_t* kt, int j0, float* scores, int stride) {
  if constexpr (RT <= ROW_TILE) {
    if (rt == RT) return score_tile<RT>(q, hd, kt, j0, scores, stride);
    score_rows<RT + 1>(rt, q, hd, kt, j0, scores, stride);
  }
}
template <int RT = 1>
void mix_rows(int rt, const float* w, int stride, int n, const half_t* v, int hd, float* out) {
  if constexpr (RT <= ROW_TILE) {
    if (rt == RT) return mix<RT>(w, stride, n, v, hd, out);
    mix_rows<RT + 1>(rt, w, stride, n, v, hd, out);
  }
}

// The calling thread's scratch buffer `slot`, at least n floats, grown as needed and never cleared: every
// value is written before it is read. Fresh zeroed vectors per layer cost ~300 KB of allocation and memset a
// layer in a verify pass over 13 positions.
enum Slot { XN, Q, K, V, ATT, O, G, U, QG, AG, SCORES, SHARES, TOPS, SUMS, WEIGHTS, SLOTS };
float* scratch(Slot slot, size_t n) {
  thread_local std::vector<float> buffers[SLOTS];
  std::vector<float>& b = buffers[slot];
  if (b.size() < n) b.resize(n);
  return b.data();
}

// Attention is split over fixed chunks of CHUNK positions, each chunk's share computed apart (its own
// maximum, sum and unnormalised mix of values) and the shares merged in chunk order (as flash-decoding does).
// The chunks spread one position's attention over the cores: whole KV heads alone, 3 heads on 2 cores, left
// one core with twice the work, and at long contexts attention reads the whole cache every token. The bounds
// are fixed (not shares of the context): a row's sums then never depend on how many positions share a pass.
constexpr int CHUNK = 128;

// One chunk's share of the attention of `rows` query vectors that share one KV head (q: rows x hd, times the
// softmax scale; row r sees positions 0..len[r]-1), over positions c0..c0+CHUNK-1: for each row with positions
// there, top[r] = the maximum score, sum[r] = the sum of exp(score - top), out[r] = the sum of exp(score - top)
// * value (rows with none are left unwritten: a row's merge reads only the chunks below its length). Keys are
// stored in blocks of 16 positions, each (hd, 16), so
// the scores of consecutive positions are one vector operation; values are (capacity, hd). Rows go up to
// ROW_TILE at a time through register tiles, so each key and value is read once per tile of rows (the
// positions of a verify pass and the query heads of a group), and a tile stops at the last position one of
// its rows sees (in a prompt's pass the early rows skip the later positions). Each row's arithmetic is the
// same whatever the other rows are. scores: room for ROW_TILE x CHUNK.
void attend_chunk(const float* q, int rows, const int* len, const half_t* kt, const half_t* v, int hd, int c0,
                  float* scores, float* out, float* top, float* sum) {
  kt += static_cast<size_t>(c0) * hd;
  v += static_cast<size_t>(c0) * hd;
  if (rows <= 2 * ROW_TILE) { // a few rows (decoding, a verify pass): ask for the chunk's values into L2 now,
    // while the scores are computed (at 1,800 tokens of context, decoding 1.04-1.07x faster; in a prompt's
    // pass many tiles of rows share the values and the requests only cost)
    const int n = std::min(CHUNK, std::max(0, *std::max_element(len, len + rows) - c0));
    const char* from = reinterpret_cast<const char*>(v);
    for (size_t b = 0; b < static_cast<size_t>(n) * hd * sizeof(half_t); b += 64) __builtin_prefetch(from + b, 0, 2);
  }
  for (int r0 = 0; r0 < rows; r0 += ROW_TILE) {
    const int rt = std::min(ROW_TILE, rows - r0);
    const int n = std::min(CHUNK, std::max(0, *std::max_element(len + r0, len + r0 + rt) - c0));
    if (n == 0) continue;
    for (int j0 = 0; j0 < n; j0 += SPAN) {
      // ask for the keys two blocks ahead (left to the hardware prefetcher, decoding at 1,800 tokens of
      // context was 6% slower than with the keys transposed whole; with this, 5% faster)
      if (j0 + 2 * SPAN < n)
        for (int b = 0; b < hd * KEY_BLOCK * 2; b += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(kt + static_cast<size_t>(j0 + 2 * SPAN) * hd) + b);
      score_rows(rt, q + static_cast<size_t>(r0) * hd, hd, kt, j0, scores, CHUNK);
    }
    for (int r = 0; r < rt; ++r) {
      float* sr = scores + static_cast<size_t>(r) * CHUNK;
      const int own = std::min(n, std::max(0, len[r0 + r] - c0));
      fwv tops = fwv{} - INFINITY; // the maximum W lanes at a time (one scalar chain was a third of the time)
      int j = 0;
      for (; j + W <= own; j += W) {
        const fwv x = loadw(sr + j);
        tops = x > tops ? x : tops;
      }
      float t = -INFINITY;
      for (; j < own; ++j) t = std::max(t, sr[j]);
      for (int l = 0; l < W; ++l) t = std::max(t, tops[l]);
      for (j = 0; j < own; ++j) sr[j] -= t;
      exp_inplace(sr, own);
      // 16 running sums in a fixed order (not a compiler reduction, whose grouping could follow the buffer's
      // alignment): the same row always sums the same way
      float part[16] = {}, total = 0.f;
      for (j = 0; j + 16 <= own; j += 16)
        for (int l = 0; l < 16; ++l) part[l] += sr[j + l];
      for (; j < own; ++j) total += sr[j];
      for (int l = 0; l < 16; ++l) total += part[l];
      top[r0 + r] = t;
      sum[r0 + r] = total;
      std::fill(sr + own, sr + n, 0.f); // a row's positions past its own weigh 0 (adding 0 changes no sum)
    }
    mix_rows(rt, scores, CHUNK, n, v, hd, out + static_cast<size_t>(r0) * hd);
  }
}

// A row's attention from the shares of its chunks (those below its length, each with a position of the row:
// `chunks` of them, `stride` floats apart in `part`, `stride / hd` apart in top and sum), merged in chunk order.
void merge_chunks(const float* part, const float* top, const float* sum, int chunks, size_t stride, int hd,
                  float* out) {
  const size_t step = stride / hd;
  float t = -INFINITY;
  for (int c = 0; c < chunks; ++c) t = std::max(t, top[c * step]);
  float* weight = scratch(WEIGHTS, chunks);
  float total = 0.f;
  for (int c = 0; c < chunks; ++c) {
    weight[c] = std::exp(top[c * step] - t);
    total += weight[c] * sum[c * step];
  }
  for (int e0 = 0; e0 < hd; e0 += W) {
    fwv acc = {};
    for (int c = 0; c < chunks; ++c) acc += weight[c] * loadw(part + c * stride + e0);
    storew(out + e0, acc / total);
  }
}

// [begin, end) of part `part` of `parts` of n items.
inline void share(int n, int part, int parts, int& begin, int& end) {
  begin = static_cast<int>(static_cast<long>(n) * part / parts);
  end = static_cast<int>(static_cast<long>(n) * (part + 1) / parts);
}

// [begin, end) of part `part` of `parts` of n items in order, weighing weight(i): each part a run of items whose
// weights add up to about its share (an item goes to the part its weight's midpoint falls in).
template <typename Weight>
void weighted_share(int n, int part, int parts, Weight weight, int& begin, int& end) {
  long total = 0, before = 0;
  for (int i = 0; i < n; ++i) total += weight(i);
  begin = n, end = 0;
  for (int i = 0; i < n; ++i) {
    const long w = weight(i);
    if (std::min<long>((2 * before + w) * parts / (2 * std::max(total, 1l)), parts - 1) == part) {
      begin = std::min(begin, i);
      end = i + 1;
    }
    before += w;
  }
  end = std::max(begin, end);
}

// One layer over M positions as one job on the pool's cores, each step split between them, a barrier between
// steps. Run step by step on the calling thread, the norms, RoPE, SwiGLU, the activations' quantization and the
// residual adds took ~20% of a verify pass over 12 positions on 2 cores (1.8 of 9.9 ms on SmolLM2) while the
// other core waited. Steps on whole rows (norms, attention's queries) split the positions; the products split
// their output columns, and what comes next on those columns is done by the core that computed them, while they
// are in its cache: RoPE and the cache writes on whole heads, SwiGLU and the down product's quantization on
// whole groups. (As a step of its own, reading what the other core computed, RoPE and the cache writes took ~2 us
// a position and layer; from the computing core's cache ~0.25.) Each row's arithmetic is the same whichever core
// does it and however many rows there are.
void layer(const Ptrs& p, const LayerShape& L, int M, int D, int capacity, int offset) {
  const int H = L.heads, KVH = L.kv_heads, hd = L.head_dim, half = hd / 2, F = p.q[4].N;
  const size_t m = static_cast<size_t>(M);
  float *xn = scratch(XN, m * D), *q = scratch(Q, m * H * hd), *k = scratch(K, m * KVH * hd),
        *v = scratch(V, m * KVH * hd), *att = scratch(ATT, m * H * hd), *o = scratch(O, m * D),
        *g = scratch(G, m * F), *u = scratch(U, m * F);
  float* h = p.out;
  // Attention per KV head over the query rows that use it (M positions x the heads of its group), laid out
  // kv-head-major, in blocks of at most ROW_BLOCK rows (bounding the chunks' shares: a prompt's pass has 1,536
  // rows a head). A block's work items are (KV head, chunk, part of the block's rows); the rows are split in
  // parts (each reads the chunk's keys and values) only when heads and chunks make fewer than 4 items a core
  // (enough for runs of them to balance: the last chunk holds only the context past a multiple of 128), and
  // each part keeps 4 rows or more (one position's 3 rows split in two took longer than on one core).
  constexpr int ROW_BLOCK = 64;
  const int group = H / KVH, rows = M * group;
  const size_t grouped = static_cast<size_t>(KVH) * rows * hd;
  float *qg = scratch(QG, grouped), *ag = scratch(AG, grouped);
  std::vector<int> lens(rows);
  for (int r = 0; r < rows; ++r) lens[r] = offset + r / group + 1; // row r is position r / group
  const int most_chunks = (lens[rows - 1] + CHUNK - 1) / CHUNK, block_rows = std::min(ROW_BLOCK, rows);
  float* shares = scratch(SHARES, static_cast<size_t>(KVH) * most_chunks * block_rows * hd);
  float* tops = scratch(TOPS, static_cast<size_t>(KVH) * most_chunks * block_rows);
  float* sums = scratch(SUMS, static_cast<size_t>(KVH) * most_chunks * block_rows);
  QuantX &qd = thread_quantx(0), &qa = thread_quantx(1), &qf = thread_quantx(2); // inputs of width D, H hd, F
  quantx_prepare(qd, xn, M, D);
  quantx_prepare(qa, att, M, H * hd);
  quantx_prepare(qf, g, M, F);
  const int head_units = hd / unit_columns(), all_heads = H + 2 * KVH; // q's heads, then k's, then v's
  const int fgs = p.q[6].gs, fgroups = F / fgs, fg_units = fgs / unit_columns(); // the down product's groups

  pool_together(pool_size(), [&](int part, int parts, Barrier& barrier) {
    int r0, r1; // this part's positions (rows of h)
    share(M, part, parts, r0, r1);
    const size_t a = static_cast<size_t>(r0) * D, b = static_cast<size_t>(r1) * D;
    std::copy(p.h + a, p.h + b, h + a);
    rms_norm(h + a, p.attn_norm, xn + a, r1 - r0, D, L.eps);
    quantize_x(xn, D, p.q[0].gs, qd, r0, r1, 0, D / p.q[0].gs);
    barrier.wait();

    // this part's heads of q, k and v, a run of them: a key or value head weighs 7/6 of a query head, for the
    // cache it writes (at 12 positions on 2 cores, 8 heads against 7 by count left one core waiting 25% of the
    // step)
    int h0, h1;
    weighted_share(all_heads, part, parts, [&](int head) { return head < H ? 6 : 7; }, h0, h1);
    float* qkv[3] = {q, k, v};
    packed_gemm_units(qd, M, p.q, qkv, 3, static_cast<long>(h0) * head_units, static_cast<long>(h1) * head_units);
    for (int i = 0; i < M; ++i) {
      const int pos = offset + i;
      const float *c = p.cos + static_cast<size_t>(pos) * half, *s = p.sin + static_cast<size_t>(pos) * half;
      for (int head = h0; head < h1; ++head) {
        if (head < H) { // a query head: rotated, scaled, into its KV head's rows
          float* qv = q + (static_cast<size_t>(i) * H + head) * hd;
          rope(qv, c, s, half);
          float* to = qg + ((static_cast<size_t>(head / group) * M + i) * group + head % group) * hd;
          for (int e = 0; e < hd; ++e) to[e] = qv[e] * L.scale;
        } else if (head < H + KVH) { // a key head: rotated, into block pos / 16 of the cache, lane pos % 16
          const int kh = head - H;
          float* kv = k + (static_cast<size_t>(i) * KVH + kh) * hd;
          rope(kv, c, s, half);
          half_t* kt = p.k_cache + (static_cast<size_t>(kh) * capacity + pos / KEY_BLOCK * KEY_BLOCK) * hd +
                       pos % KEY_BLOCK;
          for (int e = 0; e < hd; ++e) kt[e * KEY_BLOCK] = static_cast<half_t>(kv[e]);
        } else { // a value head
          const int kh = head - H - KVH;
          const float* vv = v + (static_cast<size_t>(i) * KVH + kh) * hd;
          half_t* vt = p.v_cache + (static_cast<size_t>(kh) * capacity + pos) * hd;
          for (int e = 0; e < hd; ++e) vt[e] = static_cast<half_t>(vv[e]);
        }
      }
    }
    barrier.wait();

    for (int b0 = 0; b0 < rows; b0 += ROW_BLOCK) {
      const int nb = std::min(ROW_BLOCK, rows - b0), last = lens[b0 + nb - 1], chunks = (last + CHUNK - 1) / CHUNK;
      const int splits = std::max(1, std::min(nb / 4, (4 * parts + KVH * chunks - 1) / (KVH * chunks)));
      const size_t per_chunk = static_cast<size_t>(nb) * hd; // one chunk's shares of one KV head's rows
      const int items = KVH * chunks * splits;
      int i0, i1; // a run of items, about as many positions to attend over in each part's
      const auto positions = [&](int item) { return std::min(CHUNK, last - item / splits % chunks * CHUNK); };
      weighted_share(items, part, parts, positions, i0, i1);
      float* scores = scratch(SCORES, static_cast<size_t>(ROW_TILE) * CHUNK);
      for (int item = i0; item < i1; ++item) {
        const int kh = item / (chunks * splits), c = item / splits % chunks;
        int j0, j1; // the item's rows of the block
        share(nb, item % splits, splits, j0, j1);
        const size_t at = (static_cast<size_t>(kh) * chunks + c) * nb + j0;
        if (j1 > j0)
          attend_chunk(qg + (static_cast<size_t>(kh) * rows + b0 + j0) * hd, j1 - j0, lens.data() + b0 + j0,
                       p.k_cache + static_cast<size_t>(kh) * hd * capacity,
                       p.v_cache + static_cast<size_t>(kh) * capacity * hd, hd, c * CHUNK, scores,
                       shares + at * hd, tops + at, sums + at);
      }
      barrier.wait();
      int j0, j1; // this part's (KV head, row) pairs of the block
      share(KVH * nb, part, parts, j0, j1);
      for (int j = j0; j < j1; ++j) {
        const int kh = j / nb, r = j % nb;
        const size_t at = static_cast<size_t>(kh) * chunks * nb + r;
        merge_chunks(shares + at * hd, tops + at, sums + at, (lens[b0 + r] + CHUNK - 1) / CHUNK, per_chunk, hd,
                     ag + (static_cast<size_t>(kh) * rows + b0 + r) * hd);
      }
      barrier.wait();
    }
    for (int i = r0; i < r1; ++i)
      for (int hh = 0; hh < H; ++hh)
        std::copy_n(ag + ((static_cast<size_t>(hh / group) * M + i) * group + hh % group) * hd, hd,
                    att + (static_cast<size_t>(i) * H + hh) * hd);
    quantize_x(att, H * hd, p.q[3].gs, qa, r0, r1, 0, H * hd / p.q[3].gs);
    barrier.wait();
    int u0, u1;
    share(product_units(p.q[3]), part, parts, u0, u1);
    packed_gemm_units(qa, M, p.q + 3, &o, 1, u0, u1);
    barrier.wait();

    for (size_t i = a; i < b; ++i) h[i] += o[i];
    rms_norm(h + a, p.mlp_norm, xn + a, r1 - r0, D, L.eps);
    quantize_x(xn, D, p.q[4].gs, qd, r0, r1, 0, D / p.q[4].gs);
    barrier.wait();

    int f0, f1; // this part's groups of the down product's input: the same columns of gate and up
    share(fgroups, part, parts, f0, f1);
    packed_gemm_units(qd, M, p.q + 4, &g, 1, static_cast<long>(f0) * fg_units, static_cast<long>(f1) * fg_units);
    packed_gemm_units(qd, M, p.q + 5, &u, 1, static_cast<long>(f0) * fg_units, static_cast<long>(f1) * fg_units);
    for (int i = 0; i < M; ++i) {
      const size_t row = static_cast<size_t>(i) * F + static_cast<size_t>(f0) * fgs;
      swiglu(g + row, u + row, static_cast<size_t>(f1 - f0) * fgs);
    }
    quantize_x(g, F, fgs, qf, 0, M, f0, f1);
    barrier.wait();
    share(product_units(p.q[6]), part, parts, u0, u1);
    packed_gemm_units(qf, M, p.q + 6, &o, 1, u0, u1);
    barrier.wait();
    for (size_t i = a; i < b; ++i) h[i] += o[i];
  });
}

// The checks of a layer's own weights (once per model).
void check_weights(int D, const std::vector<array>& quantized, const LayerShape& shape) {
  if (quantized.size() != 21) throw std::invalid_argument("DecoderStack: give (weight, scales, biases) x 7");
  if (shape.bits.size() != 7 || shape.group_sizes.size() != 7 || shape.outputs.size() != 7)
    throw std::invalid_argument("DecoderStack: give bits, group sizes and outputs of the 7 products");
  if (shape.head_dim % 16 != 0) throw std::invalid_argument("DecoderStack: head_dim must be a multiple of 16");
  const std::vector<int>& gs = shape.group_sizes;
  if (gs[1] != gs[0] || gs[2] != gs[0] || gs[5] != gs[4])
    throw std::invalid_argument("DecoderStack: q, k and v (and gate and up) must share a group size");
  const int hd = shape.head_dim, F = shape.outputs[4];
  const int widths[7] = {D, D, D, shape.heads * hd, D, D, F}; // each product's K
  for (int i = 0; i < 7; ++i)
    check_packed(quantized[3 * i], quantized[3 * i + 1], quantized[3 * i + 2], shape.outputs[i], widths[i],
                 shape.group_sizes[i], shape.bits[i]);
}

// The checks of one layer's cache (and the RoPE table) against M new positions from offset.
void check_cache(int M, const array& cos, const array& k_cache, const array& v_cache, const LayerShape& shape,
                 int offset) {
  if (v_cache.ndim() != 3 || v_cache.shape(0) != shape.kv_heads || v_cache.shape(2) != shape.head_dim ||
      v_cache.shape(1) % KEY_BLOCK != 0 ||
      k_cache.shape() != Shape{shape.kv_heads, v_cache.shape(1) / KEY_BLOCK, shape.head_dim, KEY_BLOCK} ||
      k_cache.dtype() != float16 || v_cache.dtype() != float16)
    throw std::invalid_argument(
        "DecoderStack: caches must be fp16, keys (kv_heads, capacity / 16, head_dim, 16), values (kv_heads, "
        "capacity, head_dim), capacity a multiple of 16");
  if (offset < 0 || offset + M > v_cache.shape(1) || offset + M > cos.shape(0))
    throw std::invalid_argument("DecoderStack: the cache or the RoPE table is too short for these positions");
}

array layer_node(const array& h, const array& attn_norm, const array& mlp_norm, const array& cos, const array& sin,
                 const array& k_cache, const array& v_cache, const std::vector<array>& quantized,
                 const LayerShape& shape, int offset, const Stream& stream) {
  std::vector<array> inputs = {h, attn_norm, mlp_norm, cos, sin, k_cache, v_cache};
  inputs.insert(inputs.end(), quantized.begin(), quantized.end());
  return array(h.shape(), float32, std::make_shared<DecoderLayer>(stream, shape, offset), std::move(inputs));
}

} // namespace

void DecoderStack::add_layer(array attn_norm, array mlp_norm, std::vector<array> quantized, LayerShape shape) {
  check_weights(attn_norm.size(), quantized, shape);
  if (!layers_.empty() && attn_norm.size() != layers_[0].attn_norm.size())
    throw std::invalid_argument("DecoderStack: every layer must have the same width");
  layers_.push_back({std::move(attn_norm), std::move(mlp_norm), std::move(quantized), std::move(shape)});
}

array DecoderStack::operator()(const array& h, const std::vector<array>& keys, const std::vector<array>& values,
                               const std::vector<int>& offsets, StreamOrDevice s) const {
  const size_t n = layers_.size();
  if (keys.size() != n || values.size() != n || offsets.size() != n)
    throw std::invalid_argument("DecoderStack: give one key cache, value cache and offset per layer");
  // every layer keeps h's shape and type: checked once, not per layer
  if (h.ndim() != 2 || h.dtype() != float32) throw std::invalid_argument("DecoderStack: h must be (M, D) fp32");
  if (n && h.shape(1) != static_cast<int>(layers_[0].attn_norm.size()))
    throw std::invalid_argument("DecoderStack: h must be (M, D) with D the layers' width");
  const Stream stream = to_stream(s);
  array x = h;
  for (size_t i = 0; i < n; ++i) {
    const Layer& L = layers_[i];
    check_cache(h.shape(0), cos_, keys[i], values[i], L.shape, offsets[i]);
    x = layer_node(x, L.attn_norm, L.mlp_norm, cos_, sin_, keys[i], values[i], L.quantized, L.shape, offsets[i],
                   stream);
  }
  return x;
}

void DecoderLayer::eval_cpu(const std::vector<array>& in, array& out) {
  for (auto& a : in)
    if (!a.flags().row_contiguous) throw std::runtime_error("DecoderStack: inputs must be row-contiguous");
  out.set_data(allocator::malloc(out.nbytes()));
  auto& enc = cpu::get_command_encoder(stream());
  for (auto& a : in) enc.set_input_array(a);
  enc.set_output_array(out);
  Ptrs p{in[0].data<float>(), in[1].data<float>(), in[2].data<float>(), in[3].data<float>(), in[4].data<float>(),
         static_cast<half_t*>(const_cast<void*>(in[5].data<void>())),
         static_cast<half_t*>(const_cast<void*>(in[6].data<void>())), out.data<float>(), {}};
  for (int i = 0; i < 7; ++i)
    p.q[i] = packed_weight(in[7 + 3 * i], in[8 + 3 * i], in[9 + 3 * i], shape_.outputs[i], shape_.group_sizes[i],
                           shape_.bits[i]);
  const int M = in[0].shape(0), D = in[0].shape(1), capacity = in[6].shape(1), offset = offset_;
  LayerShape L = shape_;
  enc.dispatch([p, L, M, D, capacity, offset]() { layer(p, L, M, D, capacity, offset); });
}

void DecoderLayer::eval_gpu(const std::vector<array>&, array&) {
  throw std::runtime_error("edge's decoder layers are a CPU kernel; on the GPU edge uses mlx-lm's layers.");
}

} // namespace edge
