// Internal to the shim (C++ only, never seen by the NIF): the handles behind
// emlx_shim.h's opaque types, the exception guard every C entry point runs
// its body under, and what the C face, the op table and program replay
// share.
#ifndef EMLX_INTERNAL_HPP
#define EMLX_INTERNAL_HPP

#include <mlx/mlx.h>

#include <optional>
#include <stdexcept>
#include <vector>

#include "emlx_shim.h"

namespace mx = mlx::core;

struct emlx_arr {
  mx::array a;
  explicit emlx_arr(mx::array x) : a(std::move(x)) {}
};

// A worker's stream. A GPU worker also holds a CPU stream made on the same
// thread: what MLX's CUDA backend lacks (float64, linear algebra, 64-bit
// scatter) runs there, on the same arrays (see emlx_ops.cpp, stream_for).
// A CPU stream's tasks run on the worker's thread when it waits for them
// (inl, cpu_inline.cpp).
struct emlx_stream {
  mx::Stream s;
  std::optional<mx::Stream> cpu;
  void *inl = nullptr;
  explicit emlx_stream(mx::Stream x, std::optional<mx::Stream> c = std::nullopt) : s(x), cpu(c) {}
};

namespace emlx {

// A check of ours failed: reported as ArgumentError, not NIFError.
struct arg_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- element types (emlx_shim.cpp) ----
mx::Dtype to_dtype(int code);  // throws arg_error for a code EMLX does not know
int from_dtype(mx::Dtype d);   // -1 for a type EMLX has no code for

// ---- the exception guard (emlx_shim.cpp) ----

// Called from a catch block: keeps the exception's message for
// emlx_last_error() and returns its status (EMLX_ERR_ARG for arg_error).
emlx_status caught_status();

// Runs f, turning every exception into a status.
template <typename F>
emlx_status guard(F &&f) {
  try {
    f();
    return EMLX_OK;
  } catch (...) {
    return caught_status();
  }
}

// Hands results out as new handles; on failure none is left behind (emlx_shim.cpp).
void hand_out(std::vector<mx::array> &results, emlx_arr **outs);

// ---- the op table (emlx_ops.cpp) ----

// Runs one op-table instruction on the worker's stream (or its CPU stream,
// for what the GPU lacks): with out_dtype >= 0 every result is cast to it
// when its own type differs. Throws on failure.
std::vector<mx::array> run_instr(int op, const emlx_stream &stream, const emlx_arg *args, int out_dtype);

// The value of a `full` instruction (the op table's value broadcast to a
// shape): its scalar in its type, with no primitive; nullopt for other ops.
std::optional<mx::array> full_value(int op, const emlx_arg *args);

// ---- CPU tasks on the worker's thread (cpu_inline.cpp) ----

// Sets it up for a CPU stream made on this thread (nullptr: not set up).
void *cpu_inline_start(mx::Stream s);
void cpu_inline_stop(void *inl);
// mx::eval, mx::async_eval and mx::synchronize, for the worker's thread:
// small evals run this thread's CPU stream's tasks here.
void eval_here(std::vector<mx::array> outs);
void async_eval_here(std::vector<mx::array> outs);
void synchronize_here(mx::Stream s);
// n instructions were posted (tells small evals from big ones).
void note_work(int64_t n);

// ---- the wait for a GPU eval (gpu_wait.cpp) ----

// Sets this thread's spin window up (a GPU queue's worker).
void gpu_wait_start();
// Whether this thread spins for its GPU evals.
bool gpu_wait_spins();
// mx::eval, waiting for the GPU by asking its events for up to the window.
void gpu_wait_eval(std::vector<mx::array> outs);

// The stream that work on `x` runs on: the CPU stream for float64 on a GPU worker.
const mx::Stream &stream_for_array(const emlx_stream &s, const mx::array &x);

}  // namespace emlx

#endif
