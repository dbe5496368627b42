// See argmax.h.

#include "argmax.h"

#include <cstdint>
#include <cstring>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "pool.h"

namespace edge {

namespace {

// 16 lanes (GCC / Clang vector extensions: one AVX-512 register, two AVX2 ones, four NEON ones).
typedef float f16v __attribute__((vector_size(64)));
typedef int32_t i16v __attribute__((vector_size(64)));

int32_t argmax_row(const float* x, int n, int64_t step) {
  int j = 0;
  float top = -INFINITY;
  int32_t at = 0;
  if (step != 1) { // a strided row (rare): one value at a time
    for (; j < n; ++j)
      if (x[j * step] > top) top = x[j * step], at = j;
    return at;
  }
  if (n >= 16) {
    // each lane keeps its largest value and the first index holding it (strict >: a later equal value does
    // not replace it); then the smallest index among the lanes holding the overall largest
    f16v best, v;
    std::memcpy(&best, x, sizeof best);
    i16v index = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, where = index;
    for (j = 16; j + 16 <= n; j += 16) {
      std::memcpy(&v, x + j, sizeof v);
      index += 16;
      const i16v more = v > best;
      best = more ? v : best;
      where = more ? index : where;
    }
    for (int l = 0; l < 16; ++l)
      if (best[l] > top || (best[l] == top && where[l] < at)) top = best[l], at = where[l];
  }
  for (; j < n; ++j) // the tail: indices past every lane's, so only a strictly larger value wins
    if (x[j] > top) top = x[j], at = j;
  return at;
}

} // namespace

array argmax_rows(const array& x, StreamOrDevice s) {
  if (x.ndim() < 1 || x.shape(-1) < 1) throw std::invalid_argument("edge argmax_rows: x needs a non-empty last axis");
  auto stream = to_stream(s);
  Shape out_shape = x.shape();
  out_shape.pop_back();
  const array xf = x.dtype() == float32 ? x : astype(x, float32, stream);
  return array(out_shape, int32, std::make_shared<ArgmaxRows>(stream), {xf});
}

void ArgmaxRows::eval_cpu(const std::vector<array>& inputs, array& out) {
  auto& enc = cpu::get_command_encoder(stream());
  const array& x = inputs[0];
  out.set_data(allocator::malloc(out.nbytes()));
  enc.set_input_array(x);
  enc.set_output_array(out);
  // any strides (a slice such as logits[:, -1, :] is a view): each row's start from the leading axes' strides
  const int n = x.shape(-1), rows = static_cast<int>(out.size());
  const int64_t step = x.strides().back();
  std::vector<int64_t> starts(rows);
  for (int r = 0; r < rows; ++r) {
    int64_t at = 0;
    for (int d = x.ndim() - 2, rest = r; d >= 0; --d) {
      at += static_cast<int64_t>(rest % x.shape(d)) * x.strides()[d];
      rest /= x.shape(d);
    }
    starts[r] = at;
  }
  const float* xp = x.data<float>();
  int32_t* op = out.data<int32_t>();
  enc.dispatch([xp, op, n, rows, step, starts = std::move(starts)]() {
    parallel_for(rows, static_cast<long>(rows) * n, [&](int begin, int end) {
      for (int r = begin; r < end; ++r) op[r] = argmax_row(xp + starts[r], n, step);
    });
  });
}

void ArgmaxRows::eval_gpu(const std::vector<array>&, array&) {
  throw std::runtime_error("EdgeArgmaxRows is one of edge's CPU kernels; on the GPU edge uses MLX's argmax.");
}

} // namespace edge
