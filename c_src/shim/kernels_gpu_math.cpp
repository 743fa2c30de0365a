// Correctly rounded float32 math on the GPU.
//
// MLX's CUDA kernels call CUDA's single-precision library (expf, logf,
// atan2f, ...), which is up to 2 ulp off; Nx (and EMLX on the CPU) gives the
// float32 nearest to the exact value. On a GPU stream, the float32 inputs of
// the ops below therefore run a small CUDA kernel of ours (MLX's
// fast::cuda_kernel, compiled once per op by NVRTC) that computes in double
// precision and rounds once: the float32 nearest the true value for all but
// astronomically rare inputs. Datacenter GPUs run float64 at half the
// float32 rate, and these ops are bound by memory, so the cost is small
// (the README gives the measured figures). Other types and empty arrays
// take MLX's own ops; on the CPU, kernels_f64.cpp computes float32 in
// double for every transcendental function.

#include "emlx_kernels.hpp"

#include <mlx/fast.h>
#include <mlx/utils.h>

#include <map>
#include <mutex>
#include <string>

namespace emlx {

namespace {

bool on_gpu(SD s) { return mx::to_stream(s).device == mx::Device::gpu; }

// One compiled kernel per function name; the element count comes in as a
// one-element int64 input so that every shape shares the kernel.
const mx::fast::CustomKernelFunction &kernel_for(const std::string &fn, int arity) {
  static std::mutex mu;
  static std::map<std::string, mx::fast::CustomKernelFunction> kernels;
  std::lock_guard<std::mutex> lock(mu);
  auto it = kernels.find(fn);
  if (it != kernels.end()) return it->second;
  std::vector<std::string> inputs = arity == 1 ? std::vector<std::string>{"x", "n"}
                                               : std::vector<std::string>{"y", "x", "n"};
  std::string call = arity == 1 ? fn + "((double)x[i])" : fn + "((double)y[i], (double)x[i])";
  std::string source =
      "  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
      "  if (i < n[0]) out[i] = (float)" + call + ";\n";
  auto k = mx::fast::cuda_kernel("emlx_precise_" + fn, inputs, {"out"}, source, "", true, 0);
  return kernels.emplace(fn, std::move(k)).first->second;
}

mx::array launch(const std::string &fn, std::vector<mx::array> args, const mx::Shape &shape, SD s) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  for (auto &a : args) a = mx::flatten(a, s);
  args.push_back(mx::array(static_cast<int64_t>(n), mx::int64));
  const int threads = 256;
  auto out = kernel_for(fn, static_cast<int>(args.size()) - 1)(
      args, {mx::Shape{static_cast<int>(n)}}, {mx::float32}, {static_cast<int>(n), 1, 1}, {threads, 1, 1}, {},
      std::nullopt, false, s);
  return mx::reshape(out[0], shape, s);
}

bool precise(const mx::array &x, SD s) { return x.dtype() == mx::float32 && x.size() > 0 && on_gpu(s); }

}  // namespace

mx::array gpu_precise_unary(const char *fn, const mx::array &x, SD s,
                            mx::array (*fallback)(const mx::array &, SD)) {
  if (!precise(x, s)) return fallback(x, s);
  return launch(fn, {x}, x.shape(), s);
}

// MLX's CPU atan2 for float32 is up to 1 ulp off as well (a fifth of
// random inputs): there it is computed in float64 and rounded.
mx::array emlx_atan2(const mx::array &y, const mx::array &x, SD s) {
  if (y.dtype() != mx::float32 || x.dtype() != mx::float32) return mx::arctan2(y, x, s);
  if (!on_gpu(s))
    return mx::astype(mx::arctan2(mx::astype(y, mx::float64, s), mx::astype(x, mx::float64, s), s), mx::float32, s);
  auto both = mx::broadcast_arrays({y, x}, s);
  if (both[0].size() == 0) return mx::arctan2(y, x, s);
  return launch("atan2", both, both[0].shape(), s);
}

}  // namespace emlx
