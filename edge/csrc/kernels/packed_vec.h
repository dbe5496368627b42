// The product kernel's vector types (packed.cpp): on x86, integer dot products of int16 activation pairs with
// the unpacked weights, in AVX-512 or AVX2 registers, behind one interface (`Vec`) the kernel is written in.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EDGE_X86 1
#endif
#if EDGE_X86 && defined(__AVX512F__) && defined(__AVX512BW__)
#define EDGE_AVX512 1
#endif

#if EDGE_X86
namespace edge::packed {

// Vector types: 16 int32 lanes (one panel) with AVX-512, 8 (half a panel) with AVX2. TILE = rows x units
// held in registers at once (accumulators: 2 * TILE vectors of 32 / 16 registers); ROWS = the most rows in
// one group (AVX-512: 12 rows keep 24 accumulators in registers; measured on SmolLM2's shapes, 16 rows spill
// and run slower than two groups of 8); units(R) = the units of a tile of R rows.
#if EDGE_AVX512
struct Vec {
  static constexpr int LANES = 16, TILE = 8, ROWS = 12;
  // A tile of one unit broadcasts each row's activation pair from memory once per vpdpwssd; two units share
  // it. 5 to 8 rows then keep 2R fp32 sums (partly spilled) and still ran 15-18% faster in cache, 8-10%
  // faster in SmolLM2's forward pass over 5 to 7 positions (13 positions, as 7 + 6 rows: 5%). 8 rows gained
  // only once the chunk loop was unrolled (24% in cache); so did 9 (one unit keeps only 9 sums in flight, and
  // vpdpwssd needs ~10 to issue 2 a cycle: 6-12% faster in cache, SmolLM2's 9-position pass 8.7 -> 8.1 ms);
  // 10 to 12 rows gain nothing.
  static constexpr int units(int R) {
    return R <= 4 ? TILE / R : R <= 9 ? 2 : 1;
  }
  using I = __m512i;
  using F = __m512;
  static I load(const uint8_t* p) {
    return _mm512_loadu_si512(p);
  }
  template <int N>
  static I shr(I v) {
    return _mm512_srli_epi16(v, N);
  }
  static I band(I a, I b) {
    return _mm512_and_si512(a, b);
  }
  static I words(int v) {
    return _mm512_set1_epi16(static_cast<int16_t>(v));
  }
  static I pair(const int16_t* x) {
    int32_t v;
    std::memcpy(&v, x, 4);
    return _mm512_set1_epi32(v);
  }
  static I zero() {
    return _mm512_setzero_si512();
  }
  // acc + sum over each lane's two int16 products (weights <= 255, |x| <= 32767: far inside int32 over a block)
  static I dot(I acc, I w, I x) {
#if defined(__AVX512VNNI__)
    return _mm512_dpwssd_epi32(acc, w, x);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(w, x));
#endif
  }
  static F fzero() {
    return _mm512_setzero_ps();
  }
  static F floats(const float* p) {
    return _mm512_loadu_ps(p);
  }
  static F floats(const uint16_t* p) { // 16 fp16 values
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F fill(float v) {
    return _mm512_set1_ps(v);
  }
  static F scaled(I acc, float xs) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(xs));
  }
  static F fma(F a, F b, F c) {
    return _mm512_fmadd_ps(a, b, c);
  }
  static void store(float* p, F v) {
    _mm512_storeu_ps(p, v);
  }
  static void pin(I&) {} // 32 registers: GCC's own schedule keeps the block's vectors in them
};
#else
struct Vec {
  static constexpr int LANES = 8, TILE = 4, ROWS = 5;
  // Two units from 2 rows on: each row's broadcast pair then serves two weight vectors (2 to 5 rows keep 4
  // to 10 sums, 2 weight vectors, the 2 chunks, the mask and the pair in 16 registers). Pinned (`pin`), one
  // core ran 1.3x-1.4x faster at 3 to 12 rows than with one unit (Zen 3, 1536 x 576, 4-bit), SmolLM2's
  // forward pass over 3 / 6 / 12 positions 12-20% / 10-28% / 5-21% faster; one row gained nothing from 2.
  // 5 rows fill the 16 registers: a pass over 5 positions as one group instead of 3 + 2 cost 1.84-1.95 of
  // one position against 2.03-2.28, over 9 as 5 + 4 instead of 3 + 3 + 3 3.04-3.15 against 3.31-3.66
  // (SmolLM2, three runs each way, alternated); 6 rows (12 sums) spill and gained nothing over 3 + 3.
  static constexpr int units(int R) {
    return R == 1 ? TILE : 2;
  }
  using I = __m256i;
  using F = __m256;
  static I load(const uint8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  template <int N>
  static I shr(I v) {
    return _mm256_srli_epi16(v, N);
  }
  static I band(I a, I b) {
    return _mm256_and_si256(a, b);
  }
  static I words(int v) {
    return _mm256_set1_epi16(static_cast<int16_t>(v));
  }
  static I pair(const int16_t* x) {
    int32_t v;
    std::memcpy(&v, x, 4);
    return _mm256_set1_epi32(v);
  }
  static I zero() {
    return _mm256_setzero_si256();
  }
  static I dot(I acc, I w, I x) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, w, x);
#elif defined(__AVXVNNI__)
    return _mm256_dpwssd_avx_epi32(acc, w, x);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(w, x));
#endif
  }
  static F fzero() {
    return _mm256_setzero_ps();
  }
  static F floats(const float* p) {
    return _mm256_loadu_ps(p);
  }
  static F floats(const uint16_t* p) { // 8 fp16 values (F16C, which every AVX2 CPU has)
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static F fill(float v) {
    return _mm256_set1_ps(v);
  }
  static F scaled(I acc, float xs) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(xs));
  }
  static F fma(F a, F b, F c) {
    return _mm256_fmadd_ps(a, b, c);
  }
  static void store(float* p, F v) {
    _mm256_storeu_ps(p, v);
  }
  // An empty asm that v passes through: the weight vectors of one t, and the sums after it, exist at that point
  // of the program. Left free, GCC unpacked all of an unrolled block's weight vectors ahead and spilled them
  // and the sums to the stack (16 registers: ~190 stack accesses in a block of a 4-row tile, 58 pinned); one
  // core ran 1.3x-1.5x faster at 1 to 12 rows on a Zen 3 EPYC (1536 x 576, 4-bit).
  static void pin(I& v) {
    __asm__ volatile("" : "+x"(v));
  }
};
#endif

} // namespace edge::packed
#endif
