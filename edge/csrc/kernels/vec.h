// Vectors of the machine's width for edge's decoder layers (decoder.cpp): fp32 loads, stores, fp16 widening
// and exp, and the element-wise exp and SwiGLU built on them. Plain C++ (GCC / Clang vector extensions).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace edge {

#if !defined(__FLT16_MAX__)
#error "edge's decoder kernel keeps its KV cache as _Float16, which this compiler does not offer"
#endif
typedef _Float16 half_t; // IEEE fp16; conversions round to nearest even

// W floats, one register. The decoder's vectors were 16 floats, two AVX2 registers each: GCC kept arrays of
// them (a tile's sums) in memory and moved them through general registers at every step (attention at 1,500
// tokens of context took ~8 ms of a SmolLM2 token on a Zen 3 EPYC, against ~1 ms now). Lane for lane the
// arithmetic is the same.
#if defined(__AVX512F__)
constexpr int W = 16;
#elif defined(__AVX__)
constexpr int W = 8;
#else
constexpr int W = 4;
#endif
typedef float fwv __attribute__((vector_size(W * sizeof(float))));
inline fwv loadw(const float* p) {
  fwv v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void storew(float* p, fwv v) {
  std::memcpy(p, &v, sizeof v);
}
// W cached fp16 keys or values, widened to fp32 (with vcvtph2ps: GCC 12 converts _Float16 vectors lane by lane)
inline fwv loadw(const half_t* p) {
  fwv out;
#if defined(__AVX512F__)
  const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(__AVX__) && defined(__F16C__)
  const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  fwv v;
  for (int i = 0; i < W; ++i) v[i] = static_cast<float>(p[i]);
#endif
  std::memcpy(&out, &v, sizeof out);
  return out;
}

// exp(x) of W floats, x clamped to [-87, 88], by the Cephes polynomial that MLX's own CPU exp uses
// (simd/math.h), written with vector operations (std::exp does not vectorise without -ffast-math). Relative
// error about 1e-7.
inline fwv expw(fwv x) {
  typedef int32_t iwv __attribute__((vector_size(W * sizeof(int32_t))));
  const fwv lo = fwv{} - 87.f, hi = fwv{} + 88.f, magic = fwv{} + 12582912.f; // 1.5 * 2^23
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const fwv y = x * 1.442695f, t = y + magic; // t's low mantissa bits: y rounded to the nearest integer
  const fwv n = t - magic, f = y - n;
  fwv p = fwv{} + 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.f;
  const iwv e = ((__builtin_bit_cast(iwv, t) - __builtin_bit_cast(iwv, magic)) + 127) << 23;
  return p * __builtin_bit_cast(fwv, e);
}

// exp of n floats in place (the tail past a multiple of W on a copy, one vector).
inline void exp_inplace(float* x, int n) {
  int j = 0;
  for (; j + W <= n; j += W) storew(x + j, expw(loadw(x + j)));
  if (j < n) {
    float tail[W] = {};
    std::copy(x + j, x + n, tail);
    storew(tail, expw(loadw(tail)));
    std::copy(tail, tail + (n - j), x + j);
  }
}

// g = silu(g) * u = g / (1 + exp(-g)) * u, for n floats
inline void swiglu(float* g, const float* u, size_t n) {
  size_t i = 0;
  for (; i + W <= n; i += W) {
    const fwv x = loadw(g + i);
    storew(g + i, x / (1.f + expw(-x)) * loadw(u + i));
  }
  for (; i < n; ++i) {
    float t[W] = {-g[i]};
    storew(t, expw(loadw(t)));
    g[i] = g[i] / (1.f + t[0]) * u[i];
  }
}

} // namespace edge
