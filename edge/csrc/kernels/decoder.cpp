// See decoder.h. Everything in fp32; the products go through qmatmul (quantized.cpp).

#include "decoder.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

namespace edge {

namespace {

struct Ptrs {
  const float *h, *attn_norm, *mlp_norm, *cos, *sin;
  float *k_cache, *v_cache, *out;
  QWeight q[7];
};

void rms_norm(const float* x, const float* w, float* y, int M, int D, float eps) {
  for (int m = 0; m < M; ++m) {
    const float* xr = x + static_cast<size_t>(m) * D;
    double ss = 0;
    for (int i = 0; i < D; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float r = 1.f / std::sqrt(static_cast<float>(ss / D) + eps);
    for (int i = 0; i < D; ++i) y[static_cast<size_t>(m) * D + i] = w[i] * (xr[i] * r);
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

void layer(const Ptrs& p, const LayerShape& L, int M, int D, int capacity, int offset) {
  const int H = L.heads, KVH = L.kv_heads, hd = L.head_dim, half = hd / 2, F = p.q[4].N;
  std::vector<float> xn(static_cast<size_t>(M) * D), q(static_cast<size_t>(M) * H * hd),
      k(static_cast<size_t>(M) * KVH * hd), v(static_cast<size_t>(M) * KVH * hd), att(static_cast<size_t>(M) * H * hd),
      o(static_cast<size_t>(M) * D), g(static_cast<size_t>(M) * F), u(static_cast<size_t>(M) * F);
  float* h = p.out;
  std::copy(p.h, p.h + static_cast<size_t>(M) * D, h);

  rms_norm(h, p.attn_norm, xn.data(), M, D, L.eps);
  float* qkv[3] = {q.data(), k.data(), v.data()};
  qmatmul_many(xn.data(), M, p.q, qkv, 3);
  for (int i = 0; i < M; ++i) {
    const int pos = offset + i;
    const float *c = p.cos + static_cast<size_t>(pos) * half, *s = p.sin + static_cast<size_t>(pos) * half;
    for (int hh = 0; hh < H; ++hh) rope(q.data() + (static_cast<size_t>(i) * H + hh) * hd, c, s, half);
    for (int kh = 0; kh < KVH; ++kh) {
      float* kv = k.data() + (static_cast<size_t>(i) * KVH + kh) * hd;
      rope(kv, c, s, half);
      std::copy(kv, kv + hd, p.k_cache + (static_cast<size_t>(kh) * capacity + pos) * hd);
      const float* vv = v.data() + (static_cast<size_t>(i) * KVH + kh) * hd;
      std::copy(vv, vv + hd, p.v_cache + (static_cast<size_t>(kh) * capacity + pos) * hd);
    }
  }
  const int group = H / KVH;
  // attention, one (row, head) pair at a time, split over the cores
  parallel_for(M * H, static_cast<long>(M) * H * (offset + M) * hd * 2, [&](int begin, int end) {
    std::vector<float> scores(static_cast<size_t>(offset + M));
    for (int ih = begin; ih < end; ++ih) {
      const int i = ih / H, hh = ih % H, n_ctx = offset + i + 1;
      const float* qv = q.data() + (static_cast<size_t>(i) * H + hh) * hd;
      const float* K = p.k_cache + static_cast<size_t>(hh / group) * capacity * hd;
      const float* V = p.v_cache + static_cast<size_t>(hh / group) * capacity * hd;
      float mx = -INFINITY;
      for (int j = 0; j < n_ctx; ++j) {
        float d = 0.f;
        for (int e = 0; e < hd; ++e) d += qv[e] * K[static_cast<size_t>(j) * hd + e];
        scores[j] = d * L.scale;
        mx = std::max(mx, scores[j]);
      }
      float sum = 0.f;
      for (int j = 0; j < n_ctx; ++j) sum += (scores[j] = std::exp(scores[j] - mx));
      float* a = att.data() + (static_cast<size_t>(i) * H + hh) * hd;
      std::fill(a, a + hd, 0.f);
      for (int j = 0; j < n_ctx; ++j) {
        const float w = scores[j] / sum;
        const float* vr = V + static_cast<size_t>(j) * hd;
        for (int e = 0; e < hd; ++e) a[e] += w * vr[e];
      }
    }
  });
  qmatmul(att.data(), M, p.q[3], o.data());
  for (size_t i = 0; i < o.size(); ++i) h[i] += o[i];

  rms_norm(h, p.mlp_norm, xn.data(), M, D, L.eps);
  float* gate_up[2] = {g.data(), u.data()};
  qmatmul_many(xn.data(), M, p.q + 4, gate_up, 2);
  for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  qmatmul(g.data(), M, p.q[6], o.data());
  for (size_t i = 0; i < o.size(); ++i) h[i] += o[i];
}

} // namespace

array decoder_layer(
    const array& h,
    const array& attn_norm,
    const array& mlp_norm,
    const array& cos,
    const array& sin,
    const array& k_cache,
    const array& v_cache,
    const std::vector<array>& quantized,
    const LayerShape& shape,
    int offset,
    StreamOrDevice s) {
  if (quantized.size() != 21) throw std::invalid_argument("decoder_layer: give (weight, scales, biases) x 7");
  if (h.ndim() != 2 || h.dtype() != float32) throw std::invalid_argument("decoder_layer: h must be (M, D) fp32");
  const int M = h.shape(0);
  if (k_cache.ndim() != 3 || k_cache.shape(0) != shape.kv_heads || k_cache.shape(2) != shape.head_dim ||
      k_cache.shape() != v_cache.shape() || k_cache.dtype() != float32 || v_cache.dtype() != float32)
    throw std::invalid_argument("decoder_layer: caches must be fp32 (kv_heads, capacity, head_dim)");
  if (offset + M > k_cache.shape(1) || offset + M > cos.shape(0))
    throw std::invalid_argument("decoder_layer: the cache or the RoPE table is too short for these positions");
  std::vector<array> inputs = {h, attn_norm, mlp_norm, cos, sin, k_cache, v_cache};
  inputs.insert(inputs.end(), quantized.begin(), quantized.end());
  auto stream = to_stream(s);
  return array(h.shape(), float32, std::make_shared<DecoderLayer>(stream, shape, offset), std::move(inputs));
}

void DecoderLayer::eval_cpu(const std::vector<array>& in, array& out) {
  for (auto& a : in)
    if (!a.flags().row_contiguous) throw std::runtime_error("decoder_layer: inputs must be row-contiguous");
  out.set_data(allocator::malloc(out.nbytes()));
  auto& enc = cpu::get_command_encoder(stream());
  for (auto& a : in) enc.set_input_array(a);
  enc.set_output_array(out);
  Ptrs p{in[0].data<float>(), in[1].data<float>(), in[2].data<float>(), in[3].data<float>(), in[4].data<float>(),
         const_cast<float*>(in[5].data<float>()), const_cast<float*>(in[6].data<float>()), out.data<float>(), {}};
  for (int i = 0; i < 7; ++i) {
    const array &w = in[7 + 3 * i], &sc = in[8 + 3 * i], &bi = in[9 + 3 * i];
    p.q[i] = QWeight{w.data<uint32_t>(), sc.data<float>(), bi.data<float>(), w.shape(0),
                     w.shape(1) * 32 / shape_.bits[i], shape_.group_sizes[i], shape_.bits[i]};
  }
  const int M = in[0].shape(0), D = in[0].shape(1), capacity = in[5].shape(1), offset = offset_;
  LayerShape L = shape_;
  enc.dispatch([p, L, M, D, capacity, offset]() { layer(p, L, M, D, capacity, offset); });
}

void DecoderLayer::eval_gpu(const std::vector<array>&, array&) {
  throw std::runtime_error("edge's decoder_layer is a CPU kernel; on the GPU edge uses mlx-lm's layers.");
}

} // namespace edge
