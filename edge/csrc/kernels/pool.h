// edge's worker pool: the cores this process may use, one worker thread per extra core. Plain C++ (no MLX).
#pragma once

#include <functional>

namespace edge {

// Workers for the other cores (0 when only one core is usable).
int pool_size();

// Run job(0..parts-1), part 0 on the calling thread; returns when all parts are done. parts <= pool_size().
void pool_run(int parts, const std::function<void(int)>& job);

// body(begin, end) over [0, n) split across the pool when `work` (multiply-adds) makes splitting pay.
void parallel_for(int n, long work, const std::function<void(int, int)>& body);

} // namespace edge
