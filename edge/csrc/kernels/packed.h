// edge's quantized products on CPUs. Plain C++ (no MLX): the MLX primitives in quantized.cpp and the fused
// decoder layer in decoder.cpp call these.
//
// Weights are MLX's affine 4/8-bit quantization (w = scale * q + bias per group of 32, 64 or 128 along K),
// repacked once at load (edge/kernels/layout.py writes this layout; `unpack` there reads it back):
//   - output columns in panels of 16 (N padded up to a multiple of 16 with zero weights);
//   - per panel and per block of 32 along K, 16 * 32 * bits / 8 bytes (256 for 4-bit, 512 for 8-bit), as
//     64-byte chunks of 32 uint16 words; word i = 2 * l + e (column l of the panel, e in {0, 1}) holds
//       4-bit: in nibble k (bits 4k..4k+3) the integer of k-index 2 * (4 * chunk + k) + e,
//       8-bit: in byte k (bits 8k..8k+7) the integer of k-index 2 * (2 * chunk + k) + e,
//     so shifting and masking a chunk yields, for t = 0..15, the vector of (q[2t], q[2t+1]) int16 pairs of
//     all 16 columns: one pair per 32-bit lane, what integer dot-product instructions take;
//   - scales and biases as (panels, groups, 16), fp16 when all of them are exactly fp16 values (else fp32).
// A product then keeps 16 columns in one vector's lanes and needs no horizontal sums; each unpacked weight
// vector serves every input row of the call, so a verify pass over 8 positions costs far less than 8 decode
// steps. Each row's arithmetic is the same whatever the number of rows, so results do not depend on M.
#pragma once

#include <cstdint>

namespace edge {

constexpr int PANEL = 16; // output columns per panel

struct PackedWeight {
  const uint8_t* w; // (panels, K / 32, 16 * 32 * bits / 8)
  const void* s; // (panels, K / gs, 16), fp32 or fp16
  const void* b; // (panels, K / gs, 16), as s
  int N, K, gs, bits;
  bool fp16; // s and b are fp16
};

// y (M x N, row-contiguous) = x (M x K) @ dequantize(w).T, split over edge's worker pool.
void packed_gemm(const float* x, int M, const PackedWeight& w, float* y);

// A product's input as the kernel reads it (on x86 int16 per block of 32, with the blocks' scales and the
// groups' sums; elsewhere the floats and their group sums), prepared once for every product of the same x.
// For work already split over the parts of a pool_together job (decoder.cpp), which must not call
// packed_gemm (it runs its own pool round):
struct QuantX;
//   the calling thread's, one per slot (each reused from call to call);
constexpr int QUANTX_SLOTS = 3;
QuantX& thread_quantx(int slot = 0);
//   room for M x K at any group size (grown only, so one QuantX serves a layer's products of every K), and x
//   itself where kept, before the parts write into it;
void quantx_prepare(QuantX& qx, const float* x, int M, int K);
//   rows m0..m1-1 and groups g0..g1-1 (of gs along K) of x (M x K): each part its own rows or groups;
void quantize_x(const float* x, int K, int gs, QuantX& qx, int m0, int m1, int g0, int g1);
//   once all of x is quantized, units lo..hi-1 of the products' units (their output columns, unit_columns()
//   each, product after product: product_units(w) of each; all K and gs equal).
int product_units(const PackedWeight& w);
int unit_columns();
void packed_gemm_units(const QuantX& qx, int M, const PackedWeight* ws, float* const* ys, int count, long lo,
                       long hi);

// Rows of dequantize(w) (an embedding lookup of a packed embedding): out[r, :] = row ids[r], K floats each,
// computed as q * scale + bias (the product is exact, so this equals MLX's dequantize bit for bit).
void dequantize_rows(const PackedWeight& w, const int32_t* ids, int count, float* out);

// Which vector unit the kernels were compiled for ("avx512-vnni", "avx2+vnni", "avx2" or "portable").
const char* simd_name();

} // namespace edge
