// edge's worker pool: the cores this process may use, one worker thread per extra core. Plain C++ (no MLX).
#pragma once

#include <functional>

namespace edge {

// Workers for the other cores (0 when only one core is usable).
int pool_size();

// Run job(0..parts-1), part 0 on the calling thread; returns when all parts are done. parts <= pool_size().
void pool_run(int parts, const std::function<void(int)>& job);

// The workers sleep now instead of spinning for the next job: the caller knows none comes soon (the end of
// a decode step, where Python runs next; a spinning worker slowed it by a third on this 2-core VM).
void pool_rest();

// body(begin, end) over [0, n) split across the pool when `work` (multiply-adds) makes splitting pay.
void parallel_for(int n, long work, const std::function<void(int, int)>& body);

} // namespace edge
