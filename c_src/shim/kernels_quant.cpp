// MLX's affine group-wise quantization behind EMLX.Quantization: quantize,
// dequantize and the quantized matmul. Every shape, type, bit width and
// group size is checked here first (arg_error, an ArgumentError in Elixir)
// so MLX never sees input it would reject.

#include <string>

#include "emlx_kernels.hpp"

namespace emlx {
namespace {

bool quant_float(mx::Dtype d) { return d == mx::float32 || d == mx::float16 || d == mx::bfloat16; }

std::string shape_of(const mx::array &x) {
  std::string r = "{";
  for (size_t i = 0; i < x.shape().size(); i++) r += (i ? ", " : "") + std::to_string(x.shape()[i]);
  return r + "}";
}

// Affine mode: bits 2, 3, 4, 5, 6 or 8; groups of 32, 64 or 128.
void check_config(int64_t group_size, int64_t bits) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 5 && bits != 6 && bits != 8)
    throw arg_error("EMLX.Quantization: bits must be 2, 3, 4, 5, 6 or 8, got " + std::to_string(bits));
  if (group_size != 32 && group_size != 64 && group_size != 128)
    throw arg_error("EMLX.Quantization: group_size must be 32, 64 or 128, got " + std::to_string(group_size));
}

// The packed weights {..., rows, cols * bits / 32} with scales and biases
// {..., rows, cols / group_size}: returns cols (the unpacked last axis).
int64_t check_packed(const mx::array &w, const mx::array &scales, const mx::array &biases, int64_t group_size,
                     int64_t bits) {
  check_config(group_size, bits);
  if (w.dtype() != mx::uint32) throw arg_error("EMLX.Quantization: packed weights must be u32");
  if (!quant_float(scales.dtype()) || !quant_float(biases.dtype()))
    throw arg_error("EMLX.Quantization: scales and biases must be f32, f16 or bf16");
  if (w.ndim() < 2) throw arg_error("EMLX.Quantization: packed weights must have at least two axes");
  if (scales.shape() != biases.shape())
    throw arg_error("EMLX.Quantization: scales " + shape_of(scales) + " and biases " + shape_of(biases) +
                    " must have the same shape");
  int64_t cols = static_cast<int64_t>(w.shape(-1)) * 32 / bits;
  bool lead = scales.ndim() == w.ndim();
  for (int i = 0; lead && i < static_cast<int>(w.ndim()) - 1; i++) lead = scales.shape(i) == w.shape(i);
  if (!lead || (static_cast<int64_t>(w.shape(-1)) * 32) % bits != 0 ||
      static_cast<int64_t>(scales.shape(-1)) * group_size != cols)
    throw arg_error("EMLX.Quantization: packed weights " + shape_of(w) + " do not match scales " +
                    shape_of(scales) + " for group_size " + std::to_string(group_size) + " and bits " +
                    std::to_string(bits));
  return cols;
}

}  // namespace

std::vector<mx::array> emlx_quantize(const mx::array &w, int64_t group_size, int64_t bits, SD s) {
  check_config(group_size, bits);
  if (!quant_float(w.dtype())) throw arg_error("EMLX.Quantization: the weight must be f32, f16 or bf16");
  if (w.ndim() < 2) throw arg_error("EMLX.Quantization: the weight must have at least two axes");
  if (w.shape(-1) % group_size != 0)
    throw arg_error("EMLX.Quantization: the last axis (" + std::to_string(w.shape(-1)) +
                    ") must be divisible by group_size " + std::to_string(group_size));
  auto r = mx::quantize(w, static_cast<int>(group_size), static_cast<int>(bits), "affine", std::nullopt, s);
  if (r.size() != 3) throw arg_error("EMLX.Quantization: MLX returned no biases");
  return r;
}

mx::array emlx_dequantize(const mx::array &w, const mx::array &scales, const mx::array &biases, int64_t group_size,
                          int64_t bits, SD s) {
  check_packed(w, scales, biases, group_size, bits);
  return mx::dequantize(w, scales, mx::astype(biases, scales.dtype(), s), static_cast<int>(group_size),
                        static_cast<int>(bits), "affine", std::nullopt, std::nullopt, s);
}

// x {..., K} times the weight: transposed, w holds {N, K} (x @ w^T);
// otherwise {K, N} (x @ w). The result has x's and the scales' float type.
mx::array emlx_quantized_matmul(const mx::array &x, const mx::array &w, const mx::array &scales,
                                const mx::array &biases, bool transpose, int64_t group_size, int64_t bits, SD s) {
  int64_t cols = check_packed(w, scales, biases, group_size, bits);
  if (!quant_float(x.dtype())) throw arg_error("EMLX.Quantization: the input must be f32, f16 or bf16");
  if (w.ndim() != 2) throw arg_error("EMLX.Quantization: quantized_matmul takes a 2-D weight");
  if (x.ndim() < 1) throw arg_error("EMLX.Quantization: the input must have at least one axis");
  int64_t k = transpose ? cols : w.shape(0);
  if (x.shape(-1) != k)
    throw arg_error("EMLX.Quantization: the input's last axis (" + std::to_string(x.shape(-1)) +
                    ") must be " + std::to_string(k) + " for the weight " + shape_of(w));
  auto t = mx::promote_types(x.dtype(), scales.dtype());
  return mx::quantized_matmul(mx::astype(x, t, s), w, mx::astype(scales, t, s), mx::astype(biases, t, s), transpose,
                              static_cast<int>(group_size), static_cast<int>(bits), "affine", s);
}

}  // namespace emlx
