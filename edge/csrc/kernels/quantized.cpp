// See quantized.h. The product for one output row n and input row m is
//   y[m, n] = sum_g ( s[n, g] * dot(x[m, g], q[n, g]) + b[n, g] * sum(x[m, g]) )
// so the group sums of x are computed once per call and each weight block is unpacked
// once and used for up to MT input rows (decode has one row; speculative verification and short prompts a
// few). On x86 the dot products run on int16 activations (see the AVX2 part); elsewhere in fp32.

#include "quantized.h"

#include <algorithm>
#include <cmath>
#include <vector>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <atomic>
#include <chrono>
#include <functional>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EDGE_AVX2 1
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && EDGE_AVX2
#define EDGE_AVX512 1
#endif
#if defined(__ARM_NEON)
#include <arm_neon.h>
#define EDGE_NEON 1
#endif

namespace edge {

namespace {

constexpr int MT = 4; // input rows sharing one unpacked weight vector
// Products smaller than this run on the calling thread (splitting them costs more than it saves).
constexpr long PARALLEL_MACS = 64l << 10;

// Workers for the other cores. Products come every few tens of microseconds during a token, so a worker
// spins for up to 2 ms after each one (catching the next without a wake-up), then sleeps on a futex: when
// idle it takes no CPU. Starting threads per product cost more than it saved on 2 cores.
class Pool {
 public:
  explicit Pool(int threads) : size_(std::max(1, threads)) {
    for (int i = 1; i < size_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    stop_ = true;
    generation_.fetch_add(1);
    generation_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int size() const {
    return size_;
  }
  // Run job(0..parts-1), part 0 on the calling thread; returns when all are done.
  void run(int parts, const std::function<void(int)>& job) {
    if (parts <= 1) {
      job(0);
      return;
    }
    job_ = &job;
    parts_ = parts;
    pending_.store(parts - 1);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    job(0);
    while (pending_.load(std::memory_order_acquire) > 0) spin_pause();
  }

 private:
  static void spin_pause() {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }
  void loop(int index) {
    uint64_t seen = generation_.load();
    while (true) {
      auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(SPIN_US);
      while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until)
        for (int i = 0; i < 64; ++i) spin_pause();
      generation_.wait(seen);
      seen = generation_.load(std::memory_order_acquire);
      if (stop_) return;
      if (index < parts_) (*job_)(index);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }
  static constexpr int SPIN_US = 2000;  // measured on 2 cores: 200 us -> 88 tok/s, 2 ms -> 100 tok/s (SmolLM2)
  int size_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int)>* job_ = nullptr;
  int parts_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool instance(static_cast<int>(std::thread::hardware_concurrency()));
  return instance;
}

struct Problem {
  const float* x; // M x K
  const uint32_t* w; // N x K*bits/32
  const float* s; // N x G
  const float* b; // N x G
  const float* xsum; // M x G
  float* y; // M x N
  int M, N, K, G, gs, bits;
};

// ---- portable: plain loops (the compiler vectorises what it can) ----------------------------------------

template <int BITS>
inline float weight_at(const uint32_t* row, int k) {
  constexpr int per = 32 / BITS;
  return static_cast<float>((row[k / per] >> ((k % per) * BITS)) & ((1u << BITS) - 1));
}

template <int BITS>
void rows_portable(const Problem& p, int n0, int n1) {
  const int words = p.K * BITS / 32;
  for (int n = n0; n < n1; ++n) {
    const uint32_t* wr = p.w + static_cast<size_t>(n) * words;
    for (int m = 0; m < p.M; ++m) {
      const float* xr = p.x + static_cast<size_t>(m) * p.K;
      float acc = 0.f;
      for (int g = 0; g < p.G; ++g) {
        float d = 0.f;
        for (int k = g * p.gs; k < (g + 1) * p.gs; ++k) d += xr[k] * weight_at<BITS>(wr, k);
        acc += p.s[static_cast<size_t>(n) * p.G + g] * d + p.b[static_cast<size_t>(n) * p.G + g] * p.xsum[m * p.G + g];
      }
      p.y[static_cast<size_t>(m) * p.N + n] = acc;
    }
  }
}

#if EDGE_AVX2
// ---- AVX2: integer dot products -------------------------------------------------------------------------
// x is quantized to int16 per block of 32 (scale = absmax / 32767) once per call; each block's dot product
// with the weights' integers runs in 32-bit integer lanes (madd, or AVX-512 VNNI's dpwssd), then one fp32
// multiply-add with the block's two scales. int16 keeps the activations' rounding (1 part in 65536 of a
// block's range) far below the weights' own: llama.cpp's int8 activations (1 in 254) change SmolLM2's greedy
// answers, int16 does not. For 4-bit weights, MLX keeps weight 2j in the low nibble of byte j and 2j+1 in the
// high one, so the activations are stored evens-then-odds to match.

inline float hsum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

struct QuantX {
  const int16_t* q; // M x K (per 32-block: evens then odds for 4-bit weights)
  const float* scale; // M x K/32
};

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define EDGE_VNNI 1
#endif

// A block's 32 weight integers as unsigned bytes, in the order the activations are stored.
template <int BITS>
inline __m256i unpack_block(const uint8_t* wb) {
  if constexpr (BITS == 4) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb));
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
  } else {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb));
  }
}

// Sum over the block of (unsigned weight) x (int16 activation), in eight int32 lanes. Weights <= 255 and
// |activations| <= 32767: each lane adds four products, far inside int32.
inline __m256i block_dot(__m256i w, const int16_t* xq) {
  __m256i w0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(w)), w1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(w, 1));
  __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
  __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 16));
#if EDGE_VNNI
  return _mm256_dpwssd_epi32(_mm256_dpwssd_epi32(_mm256_setzero_si256(), w0, x0), w1, x1);
#else
  return _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
#endif
}

template <int BITS, int R>
void tile_avx2(const Problem& p, const QuantX& qx, int n, int m0) {
  constexpr int block_bytes = 32 * BITS / 8;
  const int blocks = p.K / 32;
  const int shift = p.gs == 32 ? 0 : p.gs == 64 ? 1 : 2;  // block -> group
  const uint8_t* wr = reinterpret_cast<const uint8_t*>(p.w) + static_cast<size_t>(n) * blocks * block_bytes;
  const float* sr = p.s + static_cast<size_t>(n) * p.G;
  const float* br = p.b + static_cast<size_t>(n) * p.G;
  const int16_t* xq[R];
  const float* xs[R];
  __m256 acc0[R], acc1[R];  // two chains, so consecutive blocks do not wait on each other's FMA
  for (int r = 0; r < R; ++r) {
    xq[r] = qx.q + static_cast<size_t>(m0 + r) * p.K;
    xs[r] = qx.scale + static_cast<size_t>(m0 + r) * blocks;
    acc0[r] = acc1[r] = _mm256_setzero_ps();
  }
  int j = 0;
  for (; j + 1 < blocks; j += 2) {
    const __m256i w0 = unpack_block<BITS>(wr + j * block_bytes), w1 = unpack_block<BITS>(wr + (j + 1) * block_bytes);
    const float s0 = sr[j >> shift], s1 = sr[(j + 1) >> shift];
    for (int r = 0; r < R; ++r) {
      __m256 d0 = _mm256_cvtepi32_ps(block_dot(w0, xq[r] + j * 32));
      __m256 d1 = _mm256_cvtepi32_ps(block_dot(w1, xq[r] + (j + 1) * 32));
      acc0[r] = _mm256_fmadd_ps(d0, _mm256_set1_ps(s0 * xs[r][j]), acc0[r]);
      acc1[r] = _mm256_fmadd_ps(d1, _mm256_set1_ps(s1 * xs[r][j + 1]), acc1[r]);
    }
  }
  if (j < blocks) {
    const __m256i w0 = unpack_block<BITS>(wr + j * block_bytes);
    const float s0 = sr[j >> shift];
    for (int r = 0; r < R; ++r)
      acc0[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot(w0, xq[r] + j * 32)), _mm256_set1_ps(s0 * xs[r][j]), acc0[r]);
  }
  for (int r = 0; r < R; ++r) {
    const float* xsum = p.xsum + (m0 + r) * p.G;
    float bias = 0.f;
    for (int g = 0; g < p.G; ++g) bias += br[g] * xsum[g];
    p.y[static_cast<size_t>(m0 + r) * p.N + n] = hsum(_mm256_add_ps(acc0[r], acc1[r])) + bias;
  }
}

template <int BITS>
void rows_avx2(const Problem& p, const QuantX& qx, int n0, int n1) {
  for (int n = n0; n < n1; ++n) {
    int m = 0;
    for (; m + MT <= p.M; m += MT) tile_avx2<BITS, MT>(p, qx, n, m);
    for (; m < p.M; ++m) tile_avx2<BITS, 1>(p, qx, n, m);
  }
}

// Quantize x per block of 32, and replace the group sums of x by those of its quantized values: the result
// is then exactly (quantized x) @ w.T, where the bias term cancels most of the activations' rounding (the
// weights' integers are offset, all positive; summing the exact x here would leave that error uncancelled).
void quantize_x(const Problem& p, int16_t* q, float* scale) {
  const int blocks = p.K / 32, per_group = p.gs / 32;
  float* xsum = const_cast<float*>(p.xsum);
  std::fill(xsum, xsum + p.M * p.G, 0.f);
  for (int m = 0; m < p.M; ++m)
    for (int j = 0; j < blocks; ++j) {
      const float* xb = p.x + static_cast<size_t>(m) * p.K + j * 32;
      float amax = 0.f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 32767.f, inv = d > 0.f ? 1.f / d : 0.f;
      scale[m * blocks + j] = d;
      int16_t* qb = q + static_cast<size_t>(m) * p.K + j * 32;
      int sum = 0;
      for (int i = 0; i < 32; ++i) {
        int v = static_cast<int>(std::nearbyint(xb[i] * inv));
        int at = p.bits == 4 ? (i % 2) * 16 + i / 2 : i; // evens then odds for 4-bit weights
        qb[at] = static_cast<int16_t>(v);
        sum += v;
      }
      xsum[m * p.G + j / per_group] += d * static_cast<float>(sum);
    }
}
#endif

#if EDGE_NEON
// ---- NEON: 4 weights at a time ---------------------------------------------------------------------------

template <int BITS>
inline float32x4_t unpack4(const uint32_t* row, int k) {
  if constexpr (BITS == 4) {
    const int32x4_t shifts = {-(int32_t)((k % 8) * 4), -(int32_t)((k % 8) * 4 + 4), -(int32_t)((k % 8) * 4 + 8),
                              -(int32_t)((k % 8) * 4 + 12)};
    uint32x4_t v = vshlq_u32(vdupq_n_u32(row[k / 8]), shifts);
    return vcvtq_f32_u32(vandq_u32(v, vdupq_n_u32(0xF)));
  } else {
    uint32_t word = row[k / 4];
    const int32x4_t shifts = {0, -8, -16, -24};
    return vcvtq_f32_u32(vandq_u32(vshlq_u32(vdupq_n_u32(word), shifts), vdupq_n_u32(0xFF)));
  }
}

template <int BITS>
void rows_neon(const Problem& p, int n0, int n1) {
  const int words = p.K * BITS / 32;
  for (int n = n0; n < n1; ++n) {
    const uint32_t* wr = p.w + static_cast<size_t>(n) * words;
    for (int m = 0; m < p.M; ++m) {
      const float* xr = p.x + static_cast<size_t>(m) * p.K;
      float32x4_t acc = vdupq_n_f32(0.f);
      float bias = 0.f;
      for (int g = 0; g < p.G; ++g) {
        float32x4_t d = vdupq_n_f32(0.f);
        for (int k = g * p.gs; k < (g + 1) * p.gs; k += 4) d = vfmaq_f32(d, unpack4<BITS>(wr, k), vld1q_f32(xr + k));
        acc = vfmaq_n_f32(acc, d, p.s[static_cast<size_t>(n) * p.G + g]);
        bias += p.b[static_cast<size_t>(n) * p.G + g] * p.xsum[m * p.G + g];
      }
      p.y[static_cast<size_t>(m) * p.N + n] = vaddvq_f32(acc) + bias;
    }
  }
}
#endif

// Products of one input x with `count` weights of the same width, group size and bits (q, k and v; gate and
// up): x is prepared once and the rows of all products are split over the cores in one round.
void run_many(const Problem* ps, int count) {
  const Problem& p = ps[0];
#if EDGE_AVX2
  std::vector<int16_t> q(static_cast<size_t>(p.M) * p.K);
  std::vector<float> qs(static_cast<size_t>(p.M) * (p.K / 32));
  quantize_x(p, q.data(), qs.data());
  const QuantX qx{q.data(), qs.data()};
#else
  // group sums of x, shared by every output row
  float* xsum = const_cast<float*>(p.xsum);
  for (int m = 0; m < p.M; ++m)
    for (int g = 0; g < p.G; ++g) {
      float acc = 0.f;
      const float* xr = p.x + static_cast<size_t>(m) * p.K + g * p.gs;
      for (int k = 0; k < p.gs; ++k) acc += xr[k];
      xsum[m * p.G + g] = acc;
    }
#endif
  auto rows = [&](const Problem& r, int n0, int n1) {
#if EDGE_AVX2
    r.bits == 4 ? rows_avx2<4>(r, qx, n0, n1) : rows_avx2<8>(r, qx, n0, n1);
#elif EDGE_NEON
    r.bits == 4 ? rows_neon<4>(r, n0, n1) : rows_neon<8>(r, n0, n1);
#else
    r.bits == 4 ? rows_portable<4>(r, n0, n1) : rows_portable<8>(r, n0, n1);
#endif
  };
  long total = 0;
  for (int i = 0; i < count; ++i) total += ps[i].N;
  // Split the rows of all products over the cores (small work stays on the calling thread).
  const int parts = total * p.K * p.M > PARALLEL_MACS ? std::min<long>(pool().size(), std::max(1l, total / 64)) : 1;
  const long step = (total + parts - 1) / parts;
  pool().run(parts, [&](int t) {
    long lo = t * step, hi = std::min(total, (t + 1) * step), base = 0;
    for (int i = 0; i < count && lo < hi; ++i) {
      const long n = ps[i].N;
      if (lo < base + n) {
        const long end = std::min(hi, base + n);
        rows(ps[i], static_cast<int>(lo - base), static_cast<int>(end - base));
        lo = end;
      }
      base += n;
    }
  });
}

void run(const Problem& p) {
  run_many(&p, 1);
}

// Fill `out` (row-contiguous) from a strided 4-byte array (MLX does not export its own copy kernels). Rare:
// the inputs are parameters and fresh activations, which are contiguous.
void strided_fill(const array& a, array& out) {
  const uint32_t* src = static_cast<const uint32_t*>(a.data<void>());
  uint32_t* dst = out.data<uint32_t>();
  std::vector<int> idx(a.ndim(), 0);
  for (size_t i = 0; i < a.size(); ++i) {
    int64_t loc = 0;
    for (int d = 0; d < a.ndim(); ++d) loc += idx[d] * a.strides()[d];
    dst[i] = src[loc];
    for (int d = a.ndim() - 1; d >= 0 && ++idx[d] == a.shape(d); --d) idx[d] = 0;
  }
}

} // namespace

void parallel_for(int n, long work, const std::function<void(int, int)>& body) {
  const int parts = work > PARALLEL_MACS ? std::min(pool().size(), n) : 1;
  const int step = (n + parts - 1) / std::max(parts, 1);
  pool().run(parts, [&](int t) {
    if (t * step < n) body(t * step, std::min(n, (t + 1) * step));
  });
}

void qmatmul(const float* x, int M, const QWeight& q, float* y) {
  qmatmul_many(x, M, &q, &y, 1);
}

void qmatmul_many(const float* x, int M, const QWeight* qs, float* const* ys, int count) {
  for (int i = 1; i < count; ++i)
    if (qs[i].K != qs[0].K || qs[i].gs != qs[0].gs || qs[i].bits != qs[0].bits) {
      for (int j = 0; j < count; ++j) qmatmul(x, M, qs[j], ys[j]);
      return;
    }
  const int G = qs[0].K / qs[0].gs;
  std::vector<float> xsum(static_cast<size_t>(std::max(1, M * G)));
  std::vector<Problem> ps;
  for (int i = 0; i < count; ++i)
    ps.push_back(Problem{x, qs[i].w, qs[i].s, qs[i].b, xsum.data(), ys[i], M, qs[i].N, qs[i].K, G, qs[i].gs, qs[i].bits});
  run_many(ps.data(), count);
}

const char* simd_name() {
#if EDGE_AVX2 && EDGE_VNNI
  return "avx2+avx512-vnni";
#elif EDGE_AVX2
  return "avx2";
#elif EDGE_NEON
  return "neon";
#else
  return "portable";
#endif
}

array quantized_matmul(
    const array& x,
    const array& w,
    const array& scales,
    const array& biases,
    int group_size,
    int bits,
    StreamOrDevice s) {
  if (bits != 4 && bits != 8) throw std::invalid_argument("edge quantized_matmul: bits must be 4 or 8");
  if (group_size != 32 && group_size != 64 && group_size != 128)
    throw std::invalid_argument("edge quantized_matmul: group_size must be 32, 64 or 128");
  if (w.ndim() != 2 || w.dtype() != uint32) throw std::invalid_argument("edge quantized_matmul: w must be 2-D uint32");
  int N = w.shape(0);
  int K = w.shape(1) * 32 / bits;
  if (x.shape(-1) != K) throw std::invalid_argument("edge quantized_matmul: x's last axis does not match w");
  if (scales.shape(0) != N || scales.shape(1) != K / group_size || biases.shape() != scales.shape())
    throw std::invalid_argument("edge quantized_matmul: scales/biases do not match w and group_size");
  // One graph node per product: no reshape / astype / contiguous wrappers unless the inputs need them
  // (MLX spends a few microseconds per node on a CPU, which adds up over the ~200 products of a token).
  auto stream = to_stream(s);
  Shape out_shape = x.shape();
  out_shape.back() = N;
  auto fp32 = [&](const array& a) { return a.dtype() == float32 ? a : astype(a, float32, stream); };
  return array(
      out_shape,
      float32,
      std::make_shared<QuantizedMatmul>(stream, group_size, bits),
      {fp32(x), w, fp32(scales), fp32(biases)});
}

void QuantizedMatmul::eval_cpu(const std::vector<array>& inputs, array& out) {
  auto& enc = cpu::get_command_encoder(stream());
  // Row-contiguous operands; a strided view (rare: a transposed activation) is copied first, inside the
  // task, when its values exist (eval_cpu runs before the inputs' own tasks have).
  std::vector<std::pair<array, array>> copies;
  auto dense = [&](const array& a) {
    if (a.flags().row_contiguous) return a;
    array c(allocator::malloc(a.nbytes()), a.shape(), a.dtype());
    enc.add_temporary(c);
    copies.emplace_back(a, c);
    return c;
  };
  array x = dense(inputs[0]), w = dense(inputs[1]), sc = dense(inputs[2]), bi = dense(inputs[3]);
  int K = x.shape(-1), M = static_cast<int>(x.size() / std::max(K, 1)), N = w.shape(0), G = K / group_size_;
  out.set_data(allocator::malloc(out.nbytes()));
  array xsum(allocator::malloc(sizeof(float) * std::max(1, M * G)), Shape{std::max(1, M * G)}, float32);
  for (auto& in : inputs) enc.set_input_array(in);
  enc.set_output_array(out);
  enc.add_temporary(xsum);
  Problem p{x.data<float>(), w.data<uint32_t>(), sc.data<float>(), bi.data<float>(), xsum.data<float>(),
            out.data<float>(), M, N, K, G, group_size_, bits_};
  enc.dispatch([p, copies = std::move(copies)]() mutable {
    for (auto& [src, dst] : copies) strided_fill(src, dst);
    run(p);
  });
}

void QuantizedMatmul::eval_gpu(const std::vector<array>&, array&) {
  throw std::runtime_error("edge's quantized_matmul is a CPU kernel; on the GPU edge uses MLX's own.");
}

} // namespace edge
