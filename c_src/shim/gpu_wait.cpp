// The wait for a GPU eval, on a GPU queue's worker; and the busy-wait
// policy it shares with the callers' polls (emlx_poll.c).
//
// MLX's eval waits for the GPU on a CUDA event made with
// cudaEventBlockingSync: the worker sleeps in the driver until the GPU's
// interrupt wakes it. That wake-up is part of every eval's round trip
// (Python MLX's one-add round trip is 22-37 us on the H200 hosts). Here a
// GPU worker instead starts the eval (mx::async_eval) and then asks the
// outputs' events whether they are done (cudaEventQuery, through
// array::is_available, which also raises a failed eval's error), for up to
// its spin window; past that, mx::eval sleeps as before. It then raises
// any error, as mx::eval does.
//
// The window: 1 ms on a host with 8 cores or more (the worker's core is
// busy while it spins), else 0 (MLX's own wait). EMLX_GPU_SPIN_US sets
// it (0 to 10 s). As with the callers' polls (emlx_poll.c), one worker for
// each 8 cores spins at a time; the others wait in MLX's way, so that many
// GPU queues evaluating at once leave the cores to MLX's threads.

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <unistd.h>

#include "emlx_kernels.hpp"

namespace emlx {
namespace {

thread_local long long spin_ns = 0;  // this thread's window: set on a GPU worker
std::atomic<int> spinning{0};        // workers spinning now

}  // namespace

void gpu_wait_start() { spin_ns = emlx_env_us("EMLX_GPU_SPIN_US", emlx_host_cores() >= 8 ? 1000 : 0) * 1000; }

bool gpu_wait_spins() { return spin_ns > 0; }

namespace {

// Holds one of the slots while it lives, if one was free.
struct Slot {
  bool held = spinning.fetch_add(1) < emlx_busy_wait_slots();
  Slot() {
    if (!held) spinning.fetch_sub(1);
  }
  ~Slot() {
    if (held) spinning.fetch_sub(1);
  }
};

}  // namespace

void gpu_wait_eval(std::vector<mx::array> outs) {
  for (auto &a : outs)
    if (a.is_tracer()) return mx::eval(std::move(outs));  // (async_eval refuses tracers)
  mx::async_eval(outs);
  {
    Slot slot;  // (given back before MLX's wait below)
    if (slot.held) {
      auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns);
      for (auto &a : outs)
        while (!a.is_available() && std::chrono::steady_clock::now() < deadline) {
        }
    }
  }
  mx::eval(std::move(outs));  // waits for what still runs (MLX's way) and raises its errors
}

}  // namespace emlx

extern "C" {

long emlx_host_cores(void) {
  static const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n;
}

int emlx_busy_wait_slots(void) { return emlx_host_cores() >= 16 ? static_cast<int>(emlx_host_cores() / 8) : 1; }

long long emlx_env_us(const char *name, long long dflt) {
  const char *v = std::getenv(name);
  if (!v || !v[0]) return dflt;
  long long us = std::strtoll(v, nullptr, 10);
  return us < 0 ? 0 : us > 10000000 ? 10000000 : us;
}

}  // extern "C"
