// Sampling's one full-vocabulary reduction (edge/sampling.py): NumPy's float32 exp and float64 sum took ~150
// us over SmolLM2's 49k logits, ~250 us in the decode loop (its caches cold after the forward pass).
#pragma once

#include <cstddef>

namespace edge {

// sum over i of exp(x[i] - top): each exp in fp32 (vec.h's polynomial, relative error ~1e-7), 16 of a lane summed
// in fp32, those sums in fp64.
double exp_mass(const float* x, size_t n, float top);

} // namespace edge
