// Internal to the shim: the Nx-semantics kernels the op table calls, by
// family and file. Each takes MLX arrays and returns lazy MLX arrays; a
// failed check throws emlx::arg_error (ArgumentError in Elixir).
#ifndef EMLX_KERNELS_HPP
#define EMLX_KERNELS_HPP

#include <cmath>
#include <complex>
#include <cstdint>
#include <optional>
#include <vector>

#include "emlx_internal.hpp"

namespace emlx {

using SD = mx::StreamOrDevice;

inline bool is_float(mx::Dtype d) { return mx::issubdtype(d, mx::floating); }
inline bool is_complex(mx::Dtype d) { return d == mx::complex64; }
inline bool is_signed_int(mx::Dtype d) { return mx::issubdtype(d, mx::signedinteger); }
inline bool is_int(mx::Dtype d) { return mx::issubdtype(d, mx::integer); }

// ---- float64-aware unary math (kernels_f64.cpp) ----
mx::array emlx_exp(const mx::array &x, SD s);
mx::array emlx_expm1(const mx::array &x, SD s);
mx::array emlx_log1p(const mx::array &x, SD s);
mx::array emlx_sin(const mx::array &x, SD s);
mx::array emlx_cos(const mx::array &x, SD s);
mx::array emlx_tan(const mx::array &x, SD s);
mx::array emlx_sinh(const mx::array &x, SD s);
mx::array emlx_cosh(const mx::array &x, SD s);
mx::array emlx_asin(const mx::array &x, SD s);
mx::array emlx_acos(const mx::array &x, SD s);
mx::array emlx_atan(const mx::array &x, SD s);
mx::array emlx_asinh(const mx::array &x, SD s);
mx::array emlx_acosh(const mx::array &x, SD s);
mx::array emlx_atanh(const mx::array &x, SD s);
mx::array emlx_erf(const mx::array &x, SD s);
mx::array emlx_erf_inv(const mx::array &x, SD s);
mx::array emlx_sigmoid(const mx::array &x, SD s);
mx::array emlx_tanh(const mx::array &x, SD s);
mx::array emlx_rsqrt(const mx::array &x, SD s);
mx::array emlx_cbrt(const mx::array &x, SD s);
mx::array emlx_erfc(const mx::array &x, SD s);

// ---- correctly rounded float32 math on the GPU (kernels_gpu_math.cpp) ----
mx::array gpu_precise_unary(const char *fn, const mx::array &x, SD s, mx::array (*fallback)(const mx::array &, SD));
mx::array emlx_log(const mx::array &x, SD s);
mx::array emlx_atan2(const mx::array &y, const mx::array &x, SD s);

// ---- element-wise, types, reductions (kernels_elementwise.cpp) ----
mx::array truthy(const mx::array &x, SD s);  // a bool tensor: x != 0
mx::array emlx_scalar_array(const emlx_scalar &n, mx::Dtype d);
// re + im·i (complex64) from two real arrays of one shape (non-finite parts kept).
mx::array complex_from(const mx::array &re, const mx::array &im, SD s);
mx::array emlx_full(const emlx_scalar &n, const mx::Shape &shape, mx::Dtype d, SD s);
// While a program is traced for mx::compile (emlx_program.cpp): the value of
// its next `full` instruction, an input of the compiled function, when it
// has type d.
std::optional<mx::array> traced_constant(mx::Dtype d);
mx::array emlx_cast(const mx::array &x, mx::Dtype d, SD s);
bool host_readable(const mx::array &x);       // available, in a small buffer: read on the host in place
bool host_int(const mx::array &x, int64_t &v);  // an integer scalar's value, when host_readable
// Whether x is computed, asked from a BEAM thread: reads x only.
bool computed_here(const mx::array &x);
// An available, row-contiguous integer array's values (at most max; any_size
// false: only a buffer of up to 8 bytes, host memory on the GPU too), read
// in place: the count, or -1.
int host_ints(const mx::array &x, int max, bool any_size, int64_t *out);
mx::array emlx_round(const mx::array &x, SD s);
mx::array emlx_logical_not(const mx::array &x, SD s);
mx::array emlx_logical_and(const mx::array &a, const mx::array &b, SD s);
mx::array emlx_logical_or(const mx::array &a, const mx::array &b, SD s);
mx::array emlx_logical_xor(const mx::array &a, const mx::array &b, SD s);
mx::array emlx_phase(const mx::array &x, SD s);
mx::array emlx_population_count(const mx::array &x, SD s);
mx::array emlx_count_leading_zeros(const mx::array &x, SD s);
mx::array emlx_pow(const mx::array &a, const mx::array &b, SD s);
// Complex a ** b with Complex.pow/2's values where a or b has a non-finite
// part (kernels_f64.cpp); r is MLX's power.
mx::array complex_pow_nonfinite(const mx::array &a, const mx::array &b, const mx::array &r, SD s);
mx::array emlx_remainder(const mx::array &a, const mx::array &b, SD s);
mx::array emlx_quotient(const mx::array &a, const mx::array &b, SD s);
mx::array emlx_left_shift(const mx::array &a, const mx::array &b, SD s);
mx::array emlx_right_shift(const mx::array &a, const mx::array &b, SD s);
mx::array emlx_abs(const mx::array &x, SD s);
mx::array emlx_as_type(const mx::array &x, mx::Dtype d, SD s);
mx::array emlx_sum(const mx::array &x, const std::vector<int> &axes, bool keep, SD s);
mx::array emlx_all(const mx::array &x, const std::vector<int> &axes, bool keep, SD s);
mx::array emlx_any(const mx::array &x, const std::vector<int> &axes, bool keep, SD s);
mx::array emlx_argext(const mx::array &x0, int64_t axis, bool keep, bool tie_high, bool is_max, SD s);
mx::array emlx_cumext(const mx::array &x, int axis, bool reverse, bool is_max, SD s);

// ---- shape and index (kernels_shape.cpp) ----
mx::array emlx_iota(const mx::Shape &shape, int64_t axis, mx::Dtype d, SD s);
mx::array emlx_eye(const mx::Shape &shape, mx::Dtype d, SD s);
mx::array emlx_broadcast(const mx::array &x, const mx::Shape &shape, const std::vector<int> &axes, SD s);
mx::array emlx_pad_impl(const mx::array &x0, const mx::array &value, const std::vector<int64_t> &lo,
                        const std::vector<int64_t> &hi, const std::vector<int64_t> &interior, SD s);
mx::array emlx_reverse(const mx::array &x, const std::vector<int> &axes, SD s);
mx::array emlx_slice(const mx::array &x, const mx::Shape &start, const mx::Shape &lengths, const mx::Shape &strides,
                     SD s);
mx::array emlx_dynamic_slice(const mx::array &x, const std::vector<mx::array> &starts, const mx::Shape &lengths,
                             const mx::Shape &strides, SD s);
mx::array emlx_put_slice(const mx::array &x, const mx::array &upd, const std::vector<mx::array> &starts, SD s);
mx::array emlx_select(const mx::array &pred, const mx::array &a, const mx::array &b, SD s);
mx::array emlx_sort(const mx::array &x, int axis, bool desc, bool want_indices, SD s);
mx::array emlx_gather(const mx::array &x, const mx::array &idx, const std::vector<int> &axes, SD s);
mx::array emlx_indexed(const mx::array &x, const mx::array &idx, const mx::array &upd, const std::vector<int> &axes,
                       bool add, SD s);
mx::array emlx_take(const mx::array &x, const mx::array &idx, int axis, SD s);
mx::array emlx_take_along_axis(const mx::array &x, const mx::array &idx, int axis, SD s);

// ---- convolution and windows (kernels_conv.cpp) ----
mx::array emlx_window_reduce(const mx::array &x, int64_t kind, const mx::Shape &window,
                             const std::vector<int64_t> &strides, const std::vector<int64_t> &lo,
                             const std::vector<int64_t> &hi, const std::vector<int64_t> &dil, SD s);
mx::array emlx_windows(const mx::array &x, const mx::array &value, const mx::Shape &window,
                       const std::vector<int64_t> &strides, const std::vector<int64_t> &lo,
                       const std::vector<int64_t> &hi, const std::vector<int64_t> &dil, SD s);
mx::array emlx_window_scatter(const mx::array &x, const mx::array &source, const mx::array &init, bool is_max,
                              const mx::Shape &window, const std::vector<int64_t> &strides,
                              const std::vector<int64_t> &lo, const std::vector<int64_t> &hi, SD s);
mx::array emlx_conv(const mx::array &x0, const mx::array &k0, const std::vector<int> &strides,
                    const std::vector<int> &lo, const std::vector<int> &hi, const std::vector<int> &in_dil,
                    const std::vector<int> &k_dil, int fgroups, int bgroups, const std::vector<int> &in_perm,
                    const std::vector<int> &k_perm, const std::vector<int> &out_perm, std::optional<mx::Dtype> out,
                    SD s);

// ---- linear algebra and FFT (kernels_linalg.cpp) ----
mx::array emlx_dot(const mx::array &a0, const std::vector<int> &ca, const std::vector<int> &ba, const mx::array &b0,
                   const std::vector<int> &cb, const std::vector<int> &bb, std::optional<mx::Dtype> out, SD s);
mx::array emlx_dot_transposed(const mx::array &a, const std::vector<int> &ca, const std::vector<int> &ba,
                              const mx::array &b, const std::vector<int> &cb, const std::vector<int> &bb,
                              const std::vector<int> &perm, std::optional<mx::Dtype> out, SD s);
mx::array emlx_fft(const mx::array &x, int64_t n, int64_t axis, bool inverse, double eps, SD s);
mx::array emlx_triangular_solve(const mx::array &a0, const mx::array &b0, bool left, bool lower, bool transpose,
                                std::optional<mx::Dtype> out, SD s);
// ArgumentError unless x is a non-empty matrix (or a batch of them).
void check_matrix(const mx::array &x);
std::vector<mx::array> emlx_qr(const mx::array &a0, bool complete, std::optional<mx::Dtype> out, SD s);
std::vector<mx::array> emlx_svd(const mx::array &a0, bool full, std::optional<mx::Dtype> out, SD s);
std::vector<mx::array> emlx_eigh(const mx::array &a0, std::optional<mx::Dtype> out, SD s);
std::vector<mx::array> emlx_lu(const mx::array &a0, std::optional<mx::Dtype> out, SD s);
mx::array emlx_cholesky(const mx::array &a0, std::optional<mx::Dtype> out, SD s);
mx::array emlx_solve(const mx::array &a0, const mx::array &b0, std::optional<mx::Dtype> out, SD s);
mx::array emlx_determinant(const mx::array &a0, std::optional<mx::Dtype> out, SD s);

// ---- small float32 decompositions as Nx rounds them (kernels_nx_linalg.cpp) ----
std::vector<mx::array> emlx_nx_qr(const mx::array &a, bool complete, double eps, SD s);
std::vector<mx::array> emlx_nx_lu(const mx::array &a, SD s);
std::vector<mx::array> emlx_nx_eigh(const mx::array &a, double eps, int64_t max_iter, SD s);
mx::array emlx_nx_cholesky(const mx::array &a, SD s);
mx::array emlx_nx_solve(const mx::array &a, const mx::array &b, SD s);
mx::array emlx_nx_determinant(const mx::array &a, SD s);

// ---- MLX's fused transformer kernels (kernels_fast.cpp) ----
mx::array emlx_fast_rms_norm(const mx::array &x, const mx::array &w, double eps, SD s);
mx::array emlx_fast_layer_norm(const mx::array &x, const mx::array &w, const std::optional<mx::array> &b, double eps,
                               SD s);
mx::array emlx_fast_rope(const mx::array &x, int64_t dims, bool traditional, double base, double scale,
                         int64_t offset, SD s);
mx::array emlx_fast_rope_offset(const mx::array &x, int64_t dims, bool traditional, double base, double scale,
                                const mx::array &offset, SD s);
mx::array emlx_fast_rope_positions(const mx::array &x, const mx::array &pos, int64_t dims, bool traditional,
                                   double base, double scale, SD s);
mx::array emlx_fast_rope_freqs(const mx::array &x, const mx::array &pos, int64_t dims, bool traditional, double scale,
                               const mx::array &inv_freqs, SD s);
mx::array emlx_fast_sdpa(const mx::array &q, const mx::array &k, const mx::array &v, double scale, int64_t mode,
                         const std::optional<mx::array> &mask, SD s);
mx::array emlx_fast_sdpa_cached(const mx::array &q, const mx::array &k, const mx::array &v, double scale,
                                const mx::array &offset, SD s);
mx::array emlx_fast_sdpa_key_masked(const mx::array &q, const mx::array &k, const mx::array &v, double scale,
                                    const mx::array &key_mask, SD s);
mx::array emlx_fast_swiglu(const mx::array &gate, const mx::array &up, SD s);
mx::array emlx_fast_linear(const mx::array &x, const mx::array &w, SD s);
mx::array emlx_softmax(const mx::array &x, const std::vector<int> &axes, SD s);
mx::array emlx_log_softmax(const mx::array &x, const std::vector<int> &axes, SD s);
mx::array emlx_layer_norm_pattern(const mx::array &x, const mx::array &g, const mx::array &b,
                                  const std::vector<int> &axes, int64_t n, double eps, SD s);
mx::array emlx_rms_norm_pattern(const mx::array &x, const mx::array &w, const std::vector<int> &axes, int64_t n,
                                double eps, SD s);
std::vector<mx::array> emlx_fast_kv_cache_attention(const mx::array &q, const mx::array &new_k, const mx::array &new_v,
                                                    const mx::array &k_cache, const mx::array &v_cache,
                                                    const mx::array &offset, double scale,
                                                    const std::optional<mx::array> &key_mask, SD s);

// ---- affine quantization (kernels_quant.cpp) ----
std::vector<mx::array> emlx_quantize(const mx::array &w, int64_t group_size, int64_t bits, SD s);
mx::array emlx_dequantize(const mx::array &w, const mx::array &scales, const mx::array &biases, int64_t group_size,
                          int64_t bits, SD s);
mx::array emlx_quantized_matmul(const mx::array &x, const mx::array &w, const mx::array &scales,
                                const mx::array &biases, bool transpose, int64_t group_size, int64_t bits, SD s);

// ---- MLX's distributed layer (kernels_distributed.cpp) ----
mx::array emlx_dist_init(int64_t backend, bool strict, int64_t rank, int64_t size, const std::vector<int64_t> &where,
                         const std::vector<int64_t> &check_host, SD s);
bool dist_on_gpu();  // the group is NCCL's: collectives run on the GPU stream
mx::array emlx_dist_all(const mx::array &x, int64_t kind, bool check, SD s);
mx::array emlx_dist_send(const mx::array &x, int64_t dst, SD s);
mx::array emlx_dist_recv(const mx::Shape &shape, mx::Dtype dtype, int64_t src, SD s);

}  // namespace emlx

#endif
