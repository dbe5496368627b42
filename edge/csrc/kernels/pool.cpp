// See pool.h. Products come every few tens of microseconds during a token, so a worker spins for up to 2 ms
// after each job (catching the next without a wake-up), then sleeps on a futex: when idle it takes no CPU.
// Starting threads per product, and OpenMP's spinning workers, were both measured slower on 2 cores.

#include "pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <cstdint>
#include <thread>
#include <vector>
#if defined(__linux__)
#include <sched.h>
#endif

namespace edge {

namespace {

// The cores this process may run on (a container or `taskset` may allow fewer than the machine has: a
// worker spinning on a core it shares with the caller would take the caller's time).
int usable_cores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

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
  void run(int parts, const std::function<void(int)>& job) {
    if (!run_together(parts, job)) // one part, or another thread has the workers: run here, in order
      for (int i = 0; i < parts; ++i) job(i);
  }
  // job(0..parts-1) at once on the workers and this thread; false (nothing run) for one part, or while another
  // thread has the workers.
  bool run_together(int parts, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
    if (parts <= 1 || !lock.owns_lock()) return false;
    job_ = &job;
    parts_ = parts;
    pending_.store(size_ - 1);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    job(0);
    while (pending_.load(std::memory_order_acquire) > 0) spin_pause();
    return true;
  }
  static void spin_pause() {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

 private:
  void loop(int index) {
    // Start from generation 0, not from a fresh load: a job posted before this thread first ran must still
    // be seen (loading here could miss it and leave run() waiting forever).
    uint64_t seen = 0;
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
  static constexpr int SPIN_US = 2000; // measured on 2 cores: 200 us -> 88 tok/s, 2 ms -> 100 tok/s (SmolLM2)
  int size_;
  std::mutex busy_; // held by the thread whose job the workers run
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int)>* job_ = nullptr;
  int parts_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool instance(usable_cores());
  return instance;
}

} // namespace

int pool_size() {
  return pool().size();
}

void pool_run(int parts, const std::function<void(int)>& job) {
  pool().run(std::min(parts, pool().size()), job);
}

void Barrier::wait() {
  if (parts_ <= 1) return;
  const int round = round_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == parts_ - 1) {
    arrived_.store(0, std::memory_order_relaxed); // before the release below: no part can arrive at the next one
    round_.fetch_add(1, std::memory_order_release);
    return;
  }
  while (round_.load(std::memory_order_acquire) == round) Pool::spin_pause();
}

void pool_together(int parts, const std::function<void(int, int, Barrier&)>& job) {
  parts = std::max(1, std::min(parts, pool_size()));
  Barrier barrier(parts);
  if (!pool().run_together(parts, [&](int part) { job(part, parts, barrier); })) {
    Barrier alone(1);
    job(0, 1, alone);
  }
}

} // namespace edge
