// MLX's fused transformer kernels (mlx::core::fast) behind EMLX.Fast: RMS
// and layer normalisation, rotary embeddings, scaled dot-product attention
// and SwiGLU. Every shape and type is checked here first (arg_error, an
// ArgumentError in Elixir) so MLX never sees input it would reject.

#include <functional>
#include <string>
#include <unordered_map>

#include "emlx_kernels.hpp"

namespace emlx {
namespace {

bool fast_float(mx::Dtype d) { return d == mx::float32 || d == mx::float16 || d == mx::bfloat16; }

void check_float(const mx::array &x, const char *what) {
  if (!fast_float(x.dtype()))
    throw arg_error(std::string("EMLX.Fast: ") + what + " must be f32, f16 or bf16");
}

std::string shape_str(const mx::array &x) {
  std::string r = "{";
  for (size_t i = 0; i < x.shape().size(); i++) r += (i ? ", " : "") + std::to_string(x.shape()[i]);
  return r + "}";
}

// weight (and bias) of a normalisation: a vector as long as x's last axis.
void check_norm(const mx::array &x, const mx::array &w, const char *what) {
  check_float(x, "x");
  check_float(w, what);
  if (x.ndim() < 1) throw arg_error("EMLX.Fast: x must have at least one axis");
  if (w.ndim() != 1 || w.shape(0) != x.shape(-1))
    throw arg_error(std::string("EMLX.Fast: ") + what + " must have shape {" + std::to_string(x.shape(-1)) +
                    "}, got " + shape_str(w));
}

void check_rope(const mx::array &x, int64_t dims) {
  check_float(x, "the input");
  if (x.ndim() < 2) throw arg_error("EMLX.Fast: rope input must have at least two axes");
  if (dims <= 0 || dims % 2 != 0 || dims > x.shape(-1))
    throw arg_error("EMLX.Fast: rope dims must be even, positive and at most the last axis size");
}

// {B, T, ..., D} with per-token positions {B, T} becomes {B*T, M, 1, D}
// with one offset per row: MLX's per-batch offsets, one token each.
mx::array rope_rows(const mx::array &x, const mx::array &pos, int64_t dims, bool traditional,
                    std::optional<float> base, double scale, const std::optional<mx::array> &freqs, SD s) {
  check_rope(x, dims);
  if (x.ndim() < 3) throw arg_error("EMLX.Fast: rope input must be {B, T, ..., D}");
  if (pos.ndim() != 2 || pos.shape(0) != x.shape(0) || pos.shape(1) != x.shape(1))
    throw arg_error("EMLX.Fast: position_ids must have shape {" + std::to_string(x.shape(0)) + ", " +
                    std::to_string(x.shape(1)) + "}, got " + shape_str(pos));
  if (!is_int(pos.dtype())) throw arg_error("EMLX.Fast: position_ids must be integers");
  int32_t rows = x.shape(0) * x.shape(1), mid = 1;
  for (int i = 2; i < static_cast<int>(x.ndim()) - 1; i++) mid *= x.shape(i);
  auto xr = mx::reshape(x, {rows, mid, 1, x.shape(-1)}, s);
  auto off = mx::astype(mx::reshape(pos, {rows}, s), mx::int32, s);
  auto r = mx::fast::rope(xr, static_cast<int>(dims), traditional, base, static_cast<float>(scale), off, freqs, s);
  return mx::reshape(r, x.shape(), s);
}

// The value of an integer scalar, read on the host: an available array
// (one from the BEAM, or computed and waited for) is read in place
// (host_int), with no kernel and no wait on the stream, whose queue may hold
// an async_eval'd step; another is evaluated first (under mx::compile that
// throws, and the program replays plainly).
int64_t host_int_scalar(const mx::array &a, SD s) {
  int64_t v;
  if (host_int(a, v)) return v;
  auto x = mx::astype(a, mx::int64, s);
  eval_here({x});
  return *x.data<int64_t>();
}

// q {B, Nq, Tq, D}, k and v {B, Nkv, Tkv, D} with Nq a multiple of Nkv.
void check_sdpa(const mx::array &q, const mx::array &k, const mx::array &v) {
  check_float(q, "q");
  check_float(k, "k");
  check_float(v, "v");
  if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4)
    throw arg_error("EMLX.Fast: q, k and v must be {B, N, T, D}");
  if (k.shape() != v.shape()) throw arg_error("EMLX.Fast: k and v must have the same shape");
  if (q.shape(0) != k.shape(0) || q.shape(3) != k.shape(3))
    throw arg_error("EMLX.Fast: q and k must agree on batch and head size");
  if (k.shape(2) == 0 || k.shape(3) == 0) throw arg_error("EMLX.Fast: k and v must have keys and features");
  if (k.shape(1) == 0 || q.shape(1) % k.shape(1) != 0)
    throw arg_error("EMLX.Fast: q's heads must be a multiple of k's heads");
  if (q.dtype() != k.dtype() || q.dtype() != v.dtype())
    throw arg_error("EMLX.Fast: q, k and v must have the same type");
}

}  // namespace

mx::array emlx_fast_rms_norm(const mx::array &x, const mx::array &w, double eps, SD s) {
  check_norm(x, w, "weight");
  return mx::fast::rms_norm(x, mx::astype(w, x.dtype(), s), static_cast<float>(eps), s);
}

mx::array emlx_fast_layer_norm(const mx::array &x, const mx::array &w, const std::optional<mx::array> &b, double eps,
                               SD s) {
  check_norm(x, w, "weight");
  std::optional<mx::array> bias;
  if (b) {
    check_norm(x, *b, "bias");
    bias = mx::astype(*b, x.dtype(), s);
  }
  return mx::fast::layer_norm(x, mx::astype(w, x.dtype(), s), bias, static_cast<float>(eps), s);
}

mx::array emlx_fast_rope(const mx::array &x, int64_t dims, bool traditional, double base, double scale,
                         int64_t offset, SD s) {
  check_rope(x, dims);
  if (offset < INT32_MIN || offset > INT32_MAX) throw arg_error("EMLX.Fast: rope offset must fit in 32 bits");
  return mx::fast::rope(x, static_cast<int>(dims), traditional, static_cast<float>(base), static_cast<float>(scale),
                        static_cast<int>(offset), std::nullopt, s);
}

// offset: an integer scalar array, as mlx-lm's rope(x, offset) passes it,
// or one offset per row of x's first axis.
mx::array emlx_fast_rope_offset(const mx::array &x, int64_t dims, bool traditional, double base, double scale,
                                const mx::array &offset, SD s) {
  check_rope(x, dims);
  bool rows = offset.ndim() == 1 && offset.shape(0) == x.shape(0);
  if ((offset.ndim() != 0 && !rows) || !is_int(offset.dtype()))
    throw arg_error("EMLX.Fast: offset must be an integer scalar or one integer per row of the first axis");
  return mx::fast::rope(x, static_cast<int>(dims), traditional, static_cast<float>(base), static_cast<float>(scale),
                        mx::astype(offset, mx::int32, s), std::nullopt, s);
}

mx::array emlx_fast_rope_positions(const mx::array &x, const mx::array &pos, int64_t dims, bool traditional,
                                   double base, double scale, SD s) {
  return rope_rows(x, pos, dims, traditional, static_cast<float>(base), scale, std::nullopt, s);
}

// inv_freqs {dims/2}: MLX's freqs are their reciprocals (periods).
mx::array emlx_fast_rope_freqs(const mx::array &x, const mx::array &pos, int64_t dims, bool traditional, double scale,
                               const mx::array &inv_freqs, SD s) {
  if (inv_freqs.ndim() != 1 || inv_freqs.shape(0) * 2 != dims)
    throw arg_error("EMLX.Fast: freqs must have shape {dims / 2}, got " + shape_str(inv_freqs));
  check_float(inv_freqs, "freqs");
  auto freqs = mx::reciprocal(mx::astype(inv_freqs, mx::float32, s), s);
  return rope_rows(x, pos, dims, traditional, std::nullopt, scale, freqs, s);
}

// mode: 0 no mask, 1 causal, 2 the mask (integer: true attends; float: added).
mx::array emlx_fast_sdpa(const mx::array &q, const mx::array &k, const mx::array &v, double scale, int64_t mode,
                         const std::optional<mx::array> &mask, SD s) {
  check_sdpa(q, k, v);
  float sc = static_cast<float>(scale);
  if (mode == 0) return mx::fast::scaled_dot_product_attention(q, k, v, sc, "", std::nullopt, std::nullopt, false, s);
  if (mode == 1)
    return mx::fast::scaled_dot_product_attention(q, k, v, sc, "causal", std::nullopt, std::nullopt, false, s);
  if (!mask) throw arg_error("EMLX.Fast: a mask is required");
  const mx::array &m = *mask;
  if (m.ndim() > 4) throw arg_error("EMLX.Fast: the mask must have at most four axes");
  mx::Shape full = {q.shape(0), q.shape(1), q.shape(2), k.shape(2)};
  for (size_t i = 0; i < m.ndim(); i++) {
    int32_t d = m.shape()[m.ndim() - 1 - i], want = full[3 - i];
    if (d != 1 && d != want)
      throw arg_error("EMLX.Fast: the mask " + shape_str(m) + " does not broadcast to {B, N_q, T_q, T_kv}");
  }
  if (!is_float(m.dtype()) && !is_int(m.dtype()) && m.dtype() != mx::bool_)
    throw arg_error("EMLX.Fast: the mask must be an integer or float tensor");
  mx::array mm = is_float(m.dtype()) ? mx::astype(m, q.dtype(), s) : truthy(m, s);
  mm = mx::broadcast_to(mm, full, s);
  return mx::fast::scaled_dot_product_attention(q, k, v, sc, "array", mm, std::nullopt, false, s);
}

// Causal attention over the keys where key_mask {B, Tkv} is nonzero. The
// causal mask is aligned bottom-right, as MLX's own.
mx::array emlx_fast_sdpa_key_masked(const mx::array &q, const mx::array &k, const mx::array &v, double scale,
                                    const mx::array &key_mask, SD s) {
  check_sdpa(q, k, v);
  int32_t tq = q.shape(2), tk = k.shape(2);
  if (key_mask.ndim() != 2 || key_mask.shape(0) != q.shape(0) || key_mask.shape(1) != tk)
    throw arg_error("EMLX.Fast: key_mask must have shape {" + std::to_string(q.shape(0)) + ", " + std::to_string(tk) +
                    "}, got " + shape_str(key_mask));
  if (is_complex(key_mask.dtype())) throw arg_error("EMLX.Fast: key_mask must be an integer or float tensor");
  int32_t off = tk > tq ? tk - tq : 0;
  auto qi = mx::reshape(mx::arange(off, off + tq, mx::int32, s), {tq, 1}, s);
  auto ki = mx::reshape(mx::arange(0, tk, mx::int32, s), {1, tk}, s);
  auto causal = mx::reshape(mx::greater_equal(qi, ki, s), {1, 1, tq, tk}, s);
  auto keys = mx::reshape(truthy(key_mask, s), {q.shape(0), 1, 1, tk}, s);
  auto m = mx::broadcast_to(mx::logical_and(causal, keys, s), {q.shape(0), q.shape(1), tq, tk}, s);
  return mx::fast::scaled_dot_product_attention(q, k, v, static_cast<float>(scale), "array", m, std::nullopt, false,
                                                s);
}

// Attention over the filled prefix of a KV cache, as mlx-lm runs it: k and
// v {B, Nkv, Tmax, D} hold offset + Tq valid positions, q {B, Nq, Tq, D} the
// queries at positions offset..offset+Tq-1. The prefix is sliced (its length
// is read from `offset`: evaluated here outside mx::compile, and under
// mx::compile the read makes the program replay plainly) and attended with
// no mask for one query, MLX's causal mask for several: the same kernels,
// over the same keys, as mlx-lm's decode step.
mx::array emlx_fast_sdpa_cached(const mx::array &q, const mx::array &k, const mx::array &v, double scale,
                                const mx::array &offset, SD s) {
  check_sdpa(q, k, v);
  if (offset.ndim() != 0 || !is_int(offset.dtype())) throw arg_error("EMLX.Fast: offset must be an integer scalar");
  int64_t off = host_int_scalar(offset, s);
  int32_t tq = q.shape(2), tmax = k.shape(2);
  if (off < 0 || off + tq > tmax)
    throw arg_error("EMLX.Fast: offset " + std::to_string(off) + " plus " + std::to_string(tq) +
                    " queries does not fit the cache of " + std::to_string(tmax) + " positions");
  int32_t len = static_cast<int32_t>(off) + tq;
  mx::Shape lo = {0, 0, 0, 0}, hi = {k.shape(0), k.shape(1), len, k.shape(3)};
  auto kp = len == tmax ? k : mx::slice(k, lo, hi, s);
  auto vp = len == tmax ? v : mx::slice(v, lo, hi, s);
  return mx::fast::scaled_dot_product_attention(q, kp, vp, static_cast<float>(scale), tq == 1 ? "" : "causal",
                                                std::nullopt, std::nullopt, false, s);
}

// KV cache in {B, T, N, D} (Bumblebee's layout): new_k and new_v {B, T, Nkv, D}
// written into the caches {B, Tmax, Nkv, D} at `offset` (clamped to fit, as
// Nx.put_slice), then q {B, T, Nq, D} at positions offset + t attends the
// cache's positions up to its own (and, with a key mask {B, Tmax}, only
// where it is nonzero). Results: attention {B, T, Nq, D}, the two caches.
std::vector<mx::array> emlx_fast_kv_cache_attention(const mx::array &q, const mx::array &new_k, const mx::array &new_v,
                                                    const mx::array &k_cache, const mx::array &v_cache,
                                                    const mx::array &offset, double scale,
                                                    const std::optional<mx::array> &key_mask, SD s) {
  check_float(q, "q");
  check_float(k_cache, "k_cache");
  if (q.ndim() != 4 || new_k.ndim() != 4 || k_cache.ndim() != 4)
    throw arg_error("EMLX.Fast: q, new_k, new_v and the caches must be {B, T, N, D}");
  if (new_k.shape() != new_v.shape() || k_cache.shape() != v_cache.shape())
    throw arg_error("EMLX.Fast: new_k and new_v, and k_cache and v_cache, must have the same shapes");
  if (q.dtype() != k_cache.dtype() || v_cache.dtype() != k_cache.dtype() || new_k.dtype() != k_cache.dtype() ||
      new_v.dtype() != k_cache.dtype())
    throw arg_error("EMLX.Fast: q, new_k, new_v and the caches must have the same type");
  int32_t b = k_cache.shape(0), tmax = k_cache.shape(1), nkv = k_cache.shape(2), d = k_cache.shape(3);
  int32_t t = q.shape(1);
  if (new_k.shape(0) != b || new_k.shape(1) != t || new_k.shape(2) != nkv || new_k.shape(3) != d ||
      q.shape(0) != b || q.shape(3) != d || t > tmax)
    throw arg_error("EMLX.Fast: q " + shape_str(q) + ", new_k " + shape_str(new_k) + " and the cache " +
                    shape_str(k_cache) + " do not agree");
  if (offset.ndim() != 0 || !is_int(offset.dtype())) throw arg_error("EMLX.Fast: offset must be an integer scalar");
  if (key_mask && (key_mask->ndim() != 2 || key_mask->shape(0) != b || key_mask->shape(1) != tmax))
    throw arg_error("EMLX.Fast: key_mask must have shape {" + std::to_string(b) + ", " + std::to_string(tmax) + "}");
  auto zero = mx::array(0, mx::int32);
  auto off = mx::astype(offset, mx::int32, s);
  auto k = emlx_put_slice(k_cache, new_k, {zero, off, zero, zero}, s);
  auto v = emlx_put_slice(v_cache, new_v, {zero, off, zero, zero}, s);
  std::vector<int> bntd = {0, 2, 1, 3};
  auto qt = mx::transpose(q, bntd, s);
  auto kt = mx::transpose(k, bntd, s), vt = mx::transpose(v, bntd, s);
  check_sdpa(qt, kt, vt);
  auto qpos = mx::reshape(mx::add(mx::arange(0, t, mx::int32, s), off, s), {t, 1}, s);
  auto kpos = mx::reshape(mx::arange(0, tmax, mx::int32, s), {1, tmax}, s);
  auto keep = mx::reshape(mx::less_equal(kpos, qpos, s), {1, 1, t, tmax}, s);
  if (key_mask) keep = mx::logical_and(keep, mx::reshape(truthy(*key_mask, s), {b, 1, 1, tmax}, s), s);
  keep = mx::broadcast_to(keep, {b, q.shape(2), t, tmax}, s);
  auto attn = mx::fast::scaled_dot_product_attention(qt, kt, vt, static_cast<float>(scale), "array", keep,
                                                     std::nullopt, false, s);
  return {mx::transpose(attn, bntd, s), k, v};
}

// x @ w^T with MLX's own matmul in the inputs' type (as mlx-lm's nn.Linear):
// unlike Nx.dot on EMLX, half types are not computed as an f32 GEMM on the
// CPU, so results match MLX's bit for bit.
mx::array emlx_fast_linear(const mx::array &x, const mx::array &w, SD s) {
  check_float(x, "x");
  check_float(w, "weight");
  if (w.ndim() != 2 || x.ndim() < 1 || x.shape(-1) != w.shape(1))
    throw arg_error("EMLX.Fast: linear wants x {..., in} and weight {out, in}");
  return mx::matmul(x, mx::transpose(mx::astype(w, x.dtype(), s), s), s);
}

mx::array emlx_fast_swiglu(const mx::array &gate, const mx::array &up, SD s) {
  check_float(gate, "gate");
  check_float(up, "up");
  if (gate.shape() != up.shape()) throw arg_error("EMLX.Fast: gate and up must have the same shape");
  auto u = mx::astype(up, gate.dtype(), s);
  auto ops = [](const mx::array &g, const mx::array &x, SD st) {
    return mx::multiply(mx::multiply(g, mx::sigmoid(g, st), st), x, st);
  };
  auto st = mx::to_stream(s);
  if (st.device != mx::Device::gpu) return ops(gate, u, s);
  // On the GPU, one fused kernel (as mlx-lm's compiled swiglu; each op
  // still rounds to the input type, so the values are the same), instead of
  // three launches. MLX's compile cache is per thread, and so is this one.
  using fn_t = std::function<std::vector<mx::array>(const std::vector<mx::array> &)>;
  thread_local std::unordered_map<int, fn_t> fused;
  auto it = fused.find(st.index);
  if (it == fused.end()) {
    fn_t body = [ops, st](const std::vector<mx::array> &in) { return std::vector<mx::array>{ops(in[0], in[1], st)}; };
    it = fused.emplace(st.index, mx::compile(body, true)).first;
  }
  return it->second({gate, u})[0];
}

// exp(x - max(x)) / sum(exp(x - max(x))) over `axes` with MLX's fused
// kernel: what the compiler puts in place of that pattern (EMLX.Defn.Fusion).
// Half types accumulate in float32, as emlx_sum does for the composed form.
mx::array emlx_softmax(const mx::array &x, const std::vector<int> &axes, SD s) {
  bool half = x.dtype() == mx::float16 || x.dtype() == mx::bfloat16;
  return mx::softmax(x, axes, half, s);
}

// The compiler's layer norm (EMLX.Defn.Fusion): (x - mean) * rsqrt(var + eps)
// * g + b, mean and var the sums over `axes` divided by n. MLX's fused kernel
// where it applies (over the last axis, n its size, g and b of that size
// along it and of no more axes than x); the same ops composed otherwise.
// The norm is over x's last axis alone, n its size: what MLX's norm kernels
// compute.
static bool over_last_axis(const mx::array &x, const std::vector<int> &axes, int64_t n) {
  int nd = static_cast<int>(x.ndim());
  return nd > 0 && axes.size() == 1 && axes[0] == nd - 1 && n == x.shape(-1);
}

// w holds one value per element of x's last axis (its other axes of size 1,
// no more of them than x has): what MLX's norm kernels take as a weight.
static bool along_last(const mx::array &x, const mx::array &w) {
  if (w.ndim() < 1 || w.ndim() > x.ndim() || w.shape(-1) != x.shape(-1)) return false;
  for (int i = 0; i + 1 < static_cast<int>(w.ndim()); i++)
    if (w.shape(i) != 1) return false;
  return true;
}

mx::array emlx_layer_norm_pattern(const mx::array &x, const mx::array &g, const mx::array &b,
                                  const std::vector<int> &axes, int64_t n, double eps, SD s) {
  if (over_last_axis(x, axes, n) && along_last(x, g) && along_last(x, b)) {
    mx::Shape d{x.shape(-1)};
    return mx::fast::layer_norm(x, mx::reshape(mx::astype(g, x.dtype(), s), d, s),
                                mx::reshape(mx::astype(b, x.dtype(), s), d, s), static_cast<float>(eps), s);
  }
  auto count = mx::array(static_cast<double>(n), x.dtype());
  auto c = mx::subtract(x, mx::divide(emlx_sum(x, axes, true, s), count, s), s);
  auto var = mx::divide(emlx_sum(mx::multiply(c, c, s), axes, true, s), count, s);
  auto r = mx::rsqrt(mx::add(var, mx::array(eps, x.dtype()), s), s);
  return mx::add(mx::multiply(mx::multiply(c, r, s), g, s), b, s);
}

// The compiler's RMS norm (EMLX.Defn.Fusion): x * rsqrt(sum(x^2) / n + eps)
// * w over `axes`. MLX's fused kernel where it applies (as for the layer
// norm above); the same ops composed otherwise.
mx::array emlx_rms_norm_pattern(const mx::array &x, const mx::array &w, const std::vector<int> &axes, int64_t n,
                                double eps, SD s) {
  if (over_last_axis(x, axes, n) && along_last(x, w)) {
    mx::Shape d{x.shape(-1)};
    return mx::fast::rms_norm(x, mx::reshape(mx::astype(w, x.dtype(), s), d, s), static_cast<float>(eps), s);
  }
  auto ms = mx::divide(emlx_sum(mx::multiply(x, x, s), axes, true, s), mx::array(static_cast<double>(n), x.dtype()), s);
  auto r = mx::rsqrt(mx::add(ms, mx::array(eps, x.dtype()), s), s);
  return mx::multiply(mx::multiply(x, r, s), w, s);
}

// x - logsumexp(x) over `axes`: the compiler's log_softmax (EMLX.Defn.Fusion),
// MLX's logsumexp kernel (float32 accumulation) and one subtraction. A row
// holding +inf is NaN, as the composed form gives it (its shift makes
// inf - inf), where x - logsumexp(x) would give -inf beside the NaN.
mx::array emlx_log_softmax(const mx::array &x, const std::vector<int> &axes, SD s) {
  auto r = mx::subtract(x, mx::logsumexp(x, axes, true, s), s);
  auto inf_row = mx::isposinf(mx::max(x, axes, true, s), s);
  return mx::where(inf_row, mx::array(NAN, x.dtype()), r, s);
}

}  // namespace emlx
