// edge's worker pool: the cores this process may use, one worker thread per extra core. Plain C++ (no MLX).
#pragma once

#include <atomic>
#include <functional>

namespace edge {

// Workers for the other cores (0 when only one core is usable).
int pool_size();

// Run job(0..parts-1), part 0 on the calling thread; returns when all parts are done. parts <= pool_size().
void pool_run(int parts, const std::function<void(int)>& job);

// Where the parts of a pool_together job wait for each other: wait() returns once every part has called it.
class Barrier {
 public:
  explicit Barrier(int parts) : parts_(parts) {}
  void wait();

 private:
  const int parts_;
  std::atomic<int> arrived_{0}, round_{0};
};

// job(part, parts, barrier) on `parts` threads at once (parts <= pool_size(); part 0 on the calling thread), for
// work in steps that each need all of the step before: the job splits each step by part and waits at the
// barrier between steps (a spin of well under a microsecond, where a pool_run per step wakes the workers each
// time). While another thread has the workers, job(0, 1, ...) runs alone on the calling thread. A job must not
// call pool_run: its parts already hold the cores.
void pool_together(int parts, const std::function<void(int, int, Barrier&)>& job);

} // namespace edge
