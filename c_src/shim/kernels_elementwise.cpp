// Element-wise kernels with Nx semantics (rounding, integer division and
// powers, shifts, bit counts, logic on any type, casts), reductions and
// cumulative extrema.

#include <cmath>
#include <optional>
#include <type_traits>

#include "emlx_kernels.hpp"

namespace emlx {

// ---- element-wise helpers with Nx semantics ----

mx::array truthy(const mx::array &x, SD s) {
  if (x.dtype() == mx::bool_) return x;
  if (x.dtype() == mx::complex64) {
    auto zero = mx::array(0.0f);
    return mx::logical_or(mx::not_equal(mx::real(x, s), zero, s), mx::not_equal(mx::imag(x, s), zero, s), s);
  }
  // A literal zero, not mx::zeros (a Full primitive: a kernel on the GPU).
  return mx::not_equal(x, mx::array(0, x.dtype()), s);
}

mx::array emlx_scalar_array(const emlx_scalar &n, mx::Dtype d) {
  switch (n.kind) {
    case EMLX_SCALAR_INT:
      return mx::array(n.i, d);
    case EMLX_SCALAR_UINT:
      return mx::array(n.u, d);
    case EMLX_SCALAR_FLOAT:
      if (is_complex(d)) return mx::array(std::complex<float>(static_cast<float>(n.re), 0.0f), d);
      return mx::array(n.re, d);
    default:
      return mx::array(std::complex<float>(static_cast<float>(n.re), static_cast<float>(n.im)), d);
  }
}

// re + im·i (complex64) from two real arrays of one shape, built from the
// parts themselves: a product with i would turn an infinite part into NaN.
mx::array complex_from(const mx::array &re, const mx::array &im, SD s) {
  auto both = mx::stack({mx::astype(re, mx::float32, s), mx::astype(im, mx::float32, s)}, -1, s);
  return mx::reshape(mx::view(both, mx::complex64, s), re.shape(), s);
}

// A scalar is its value, an array with its data already there (as Python
// MLX's `x + 1.0` makes it): no Full primitive to schedule and evaluate for
// every Nx.add(t, 1.0). Larger shapes are a broadcast view of it, never a
// copy: under mx::compile a broadcast fuses into its consumers' kernel
// (a Full does not, and costs a kernel and a buffer of its own on the GPU).
//
// A complex value with a NaN or infinite part is made from its two float
// parts instead: under mx::compile a scalar with no primitive becomes a
// literal in the fused kernel's source, and MLX writes a complex literal as
// complex64_t(nan, nan), which does not compile.
//
// In a program traced for mx::compile, the value is an input of the compiled
// function instead (traced_constant): a scalar with no primitive there is a
// constant, whose value MLX writes into the fused kernel's source and name,
// so every new value (an option, a step size) made a new kernel to compile
// (the system C++ compiler on the CPU: 0.7-1.1 s each on the 2-core VM;
// NVRTC on the GPU). As an input, one kernel serves every value.
mx::array emlx_full(const emlx_scalar &n, const mx::Shape &shape, mx::Dtype d, SD s) {
  if (auto c = traced_constant(d)) return shape.empty() ? *c : mx::broadcast_to(*c, shape, s);
  auto v = emlx_scalar_array(n, d);
  if (is_complex(d) && n.kind != EMLX_SCALAR_INT && n.kind != EMLX_SCALAR_UINT &&
      (!std::isfinite(n.re) || (n.kind != EMLX_SCALAR_FLOAT && !std::isfinite(n.im))))
    v = complex_from(mx::array(static_cast<float>(n.re)),
                     mx::array(n.kind == EMLX_SCALAR_FLOAT ? 0.0f : static_cast<float>(n.im)), s);
  return shape.empty() ? v : mx::broadcast_to(v, shape, s);
}

namespace {
// Calls f with a pointer to x's data in its own C type; false for a type
// with none here (half precision, complex).
template <typename F>
bool visit_host_data(const mx::array &x, F &&f) {
  switch (x.dtype()) {
    case mx::bool_: f(x.data<bool>()); return true;
    case mx::int8: f(x.data<int8_t>()); return true;
    case mx::int16: f(x.data<int16_t>()); return true;
    case mx::int32: f(x.data<int32_t>()); return true;
    case mx::int64: f(x.data<int64_t>()); return true;
    case mx::uint8: f(x.data<uint8_t>()); return true;
    case mx::uint16: f(x.data<uint16_t>()); return true;
    case mx::uint32: f(x.data<uint32_t>()); return true;
    case mx::uint64: f(x.data<uint64_t>()); return true;
    case mx::float32: f(x.data<float>()); return true;
    case mx::float64: f(x.data<double>()); return true;
    default: return false;
  }
}

// Calls f with the value of x's first element, read in place.
template <typename F>
bool visit_host_scalar(const mx::array &x, F &&f) {
  return visit_host_data(x, [&](const auto *p) { f(*p); });
}

// An integer value as int64, a uint64 past INT64_MAX clamped to it.
template <typename T>
int64_t as_int64(T u) {
  if constexpr (std::is_same_v<T, uint64_t>)
    return u > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(u);
  else
    return static_cast<int64_t>(u);
}
}  // namespace

// An evaluated array in a buffer of a few bytes (a scalar constant, a value
// from the BEAM, a computed scalar) is read on the host in place. The size
// bound matters on the GPU, where reading a buffer moves all of it to
// unified memory: a scalar view of a large tensor is computed on the stream.
bool host_readable(const mx::array &x) { return x.is_available() && x.buffer_size() <= 64; }

bool host_int(const mx::array &x, int64_t &v) {
  if (x.size() != 1 || !is_int(x.dtype()) || !host_readable(x)) return false;
  return visit_host_scalar(x, [&](auto u) { v = as_int64(u); });
}

// Whether x is computed, asked from a BEAM scheduler thread while the
// worker may be using x: only reads it (is_available() would detach an
// event and set the status, writes). An array with an event still to
// check, one started by async_eval, counts as not there.
bool computed_here(const mx::array &x) {
  auto st = x.status();
  return st == mx::array::Status::available || (st == mx::array::Status::evaluated && !x.event().valid());
}

int host_ints(const mx::array &x, int max, bool any_size, int64_t *out) {
  if (!is_int(x.dtype()) || x.size() > static_cast<size_t>(max) || !computed_here(x) ||
      !x.flags().row_contiguous || x.data_size() != x.size() || (!any_size && x.buffer_size() > 8))
    return -1;
  int n = static_cast<int>(x.size());
  visit_host_data(x, [&](const auto *p) {
    for (int i = 0; i < n; i++) out[i] = as_int64(p[i]);
  });
  return n;
}

// x in type d. An available scalar (a constant, as from Nx.add(t, 1)) of a
// real type converts on the host when the conversion is exact-or-rounded
// and well defined (to a float type, or integer to integer): no AsType node
// to schedule and evaluate. Anything else is MLX's astype.
mx::array emlx_cast(const mx::array &x, mx::Dtype d, SD s) {
  if (x.dtype() == d) return x;
  bool to_float = is_float(d), from_int = is_int(x.dtype()) || x.dtype() == mx::bool_;
  if (x.ndim() == 0 && host_readable(x) && !is_complex(d) && !is_complex(x.dtype()) &&
      (to_float || (from_int && is_int(d)))) {
    std::optional<mx::array> r;
    if (visit_host_scalar(x, [&](auto u) { r = mx::array(u, d); })) return *r;
  }
  return mx::astype(x, d, s);
}

// Nx rounds half away from zero; MLX rounds half to even.
mx::array emlx_round(const mx::array &x, SD s) {
  if (!is_float(x.dtype())) return x;
  auto frac = mx::abs(mx::subtract(x, mx::trunc(x, s), s), s);
  auto away = mx::add(x, mx::multiply(mx::sign(x, s), mx::array(0.5, x.dtype()), s), s);
  // + 0.0: -0.0 (round(-0.4)) becomes +0.0, as Nx's integer rounding gives
  auto r = mx::where(mx::equal(frac, mx::array(0.5, x.dtype()), s), away, mx::round(x, 0, s), s);
  return mx::add(r, mx::array(0.0, x.dtype()), s);
}

mx::array emlx_logical_not(const mx::array &x, SD s) { return mx::logical_not(truthy(x, s), s); }

mx::array emlx_logical_and(const mx::array &a, const mx::array &b, SD s) {
  return mx::logical_and(truthy(a, s), truthy(b, s), s);
}
mx::array emlx_logical_or(const mx::array &a, const mx::array &b, SD s) {
  return mx::logical_or(truthy(a, s), truthy(b, s), s);
}
mx::array emlx_logical_xor(const mx::array &a, const mx::array &b, SD s) {
  return mx::not_equal(truthy(a, s), truthy(b, s), s);
}

mx::array emlx_phase(const mx::array &x, SD s) {
  if (is_complex(x.dtype())) return emlx_atan2(mx::imag(x, s), mx::real(x, s), s);
  auto f = is_float(x.dtype()) ? x : mx::astype(x, mx::float32, s);
  auto pi = mx::array(M_PI, f.dtype());
  auto zero = mx::array(0.0, f.dtype());
  auto r = mx::where(mx::less(f, zero, s), pi, zero, s);
  return mx::where(mx::isnan(f, s), f, r, s);
}

static int int_bits(mx::Dtype d) { return static_cast<int>(d.size()) * 8; }

static mx::Dtype unsigned_of(mx::Dtype d) {
  switch (d.size()) {
    case 1: return mx::uint8;
    case 2: return mx::uint16;
    case 4: return mx::uint32;
    default: return mx::uint64;
  }
}

// Bit counts work on the unsigned view of the same width.
mx::array emlx_population_count(const mx::array &x, SD s) {
  if (!is_int(x.dtype())) throw arg_error("population_count expects an integer tensor");
  auto u = mx::view(x, unsigned_of(x.dtype()), s);
  auto one = mx::array(1, u.dtype());
  auto count = mx::zeros_like(u, s);
  for (int k = 0; k < int_bits(u.dtype()); k++) {
    auto bit = mx::bitwise_and(mx::right_shift(u, mx::array(k, u.dtype()), s), one, s);
    count = mx::add(count, bit, s);
  }
  return mx::view(count, x.dtype(), s);
}

mx::array emlx_count_leading_zeros(const mx::array &x, SD s) {
  if (!is_int(x.dtype())) throw arg_error("count_leading_zeros expects an integer tensor");
  auto u = mx::view(x, unsigned_of(x.dtype()), s);
  auto one = mx::array(1, u.dtype());
  auto seen = mx::zeros_like(u, s);
  auto count = mx::zeros_like(u, s);
  for (int k = int_bits(u.dtype()) - 1; k >= 0; k--) {
    auto bit = mx::bitwise_and(mx::right_shift(u, mx::array(k, u.dtype()), s), one, s);
    seen = mx::bitwise_or(seen, bit, s);
    count = mx::add(count, mx::subtract(one, seen, s), s);
  }
  return mx::view(count, x.dtype(), s);
}

mx::array emlx_pow(const mx::array &a, const mx::array &b, SD s) {
  if (is_int(a.dtype())) {
    // Integer power by squaring keeps Nx's wrap-around; negative exponents give 0 (or ±1).
    auto zero = mx::array(0, a.dtype());
    auto one = mx::array(1, a.dtype());
    auto e = mx::maximum(b, zero, s);
    auto base = a;
    auto acc = mx::ones_like(mx::add(a, b, s), s);
    for (int k = 0; k < int_bits(a.dtype()); k++) {
      auto bit = mx::bitwise_and(mx::right_shift(e, mx::array(k, e.dtype()), s), one, s);
      acc = mx::where(mx::equal(bit, one, s), mx::multiply(acc, base, s), acc, s);
      base = mx::multiply(base, base, s);
    }
    if (is_signed_int(a.dtype())) {
      // x ** negative: 1 for x == 1, ±1 for x == -1, 0 otherwise (integer division of 1 by x^n)
      auto neg = mx::less(b, zero, s);
      auto minus_one = mx::array(-1, a.dtype());
      auto odd = mx::equal(mx::bitwise_and(b, one, s), one, s);
      auto neg_val = mx::where(mx::equal(a, one, s), one,
                               mx::where(mx::equal(a, minus_one, s), mx::where(odd, minus_one, one, s), zero, s),
                               s);
      acc = mx::where(neg, neg_val, acc, s);
    }
    return acc;
  }
  auto r = mx::power(a, b, s);
  return r.dtype() == mx::complex64 ? complex_pow_nonfinite(a, b, r, s) : r;
}

// A divisor that cannot trap: 0 becomes 1 and (signed) -1 becomes 1.
static mx::array safe_divisor(const mx::array &b, SD s) {
  auto one = mx::array(1, b.dtype());
  auto bad = mx::equal(b, mx::array(0, b.dtype()), s);
  if (is_signed_int(b.dtype())) bad = mx::logical_or(bad, mx::equal(b, mx::array(-1, b.dtype()), s), s);
  return mx::where(bad, one, b, s);
}

// Nx's remainder takes the dividend's sign (C's fmod / Erlang's rem).
mx::array emlx_remainder(const mx::array &a, const mx::array &b, SD s) {
  if (is_int(a.dtype())) {
    auto bs = safe_divisor(b, s);
    auto r = mx::remainder(a, bs, s);
    if (is_signed_int(a.dtype())) {
      auto zero = mx::array(0, a.dtype());
      auto fix = mx::logical_and(mx::not_equal(r, zero, s),
                                 mx::not_equal(mx::less(r, zero, s), mx::less(a, zero, s), s), s);
      r = mx::where(fix, mx::subtract(r, bs, s), r, s);
    }
    // XLA's convention for a zero divisor: the dividend.
    return mx::where(mx::equal(b, mx::array(0, b.dtype()), s), a, r, s);
  }
  auto r = mx::remainder(a, b, s);
  auto zero = mx::array(0, r.dtype());
  auto fix = mx::logical_and(mx::not_equal(r, zero, s), mx::not_equal(mx::less(r, zero, s), mx::less(a, zero, s), s), s);
  return mx::where(fix, mx::subtract(r, b, s), r, s);
}

// Integer division truncating toward zero, as Nx's quotient.
mx::array emlx_quotient(const mx::array &a, const mx::array &b, SD s) {
  if (!is_int(a.dtype())) return mx::divide(a, b, s);
  auto bs = safe_divisor(b, s);
  auto q = mx::floor_divide(a, bs, s);
  if (is_signed_int(a.dtype())) {
    auto zero = mx::array(0, a.dtype());
    auto r = mx::subtract(a, mx::multiply(q, bs, s), s);
    // A truncated quotient leaves a remainder of a's sign: where it has the
    // other sign, q was floored (whichever MLX's integer floor_divide does).
    auto fix = mx::logical_and(mx::not_equal(r, zero, s),
                               mx::not_equal(mx::less(a, zero, s), mx::less(r, zero, s), s), s);
    q = mx::where(fix, mx::add(q, mx::array(1, a.dtype()), s), q, s);
    q = mx::where(mx::equal(b, mx::array(-1, b.dtype()), s), mx::negative(a, s), q, s);
  }
  return mx::where(mx::equal(b, mx::array(0, b.dtype()), s), mx::zeros_like(q, s), q, s);
}

// Shifts by the full width or more give 0 (or -1 for negative values shifted right).
mx::array emlx_left_shift(const mx::array &a, const mx::array &b, SD s) {
  auto too_far = mx::logical_or(mx::greater_equal(b, mx::array(int_bits(a.dtype()), b.dtype()), s),
                                mx::less(b, mx::array(0, b.dtype()), s), s);
  auto safe = mx::where(too_far, mx::zeros_like(b, s), b, s);
  return mx::where(too_far, mx::zeros_like(a, s), mx::left_shift(a, safe, s), s);
}

mx::array emlx_right_shift(const mx::array &a, const mx::array &b, SD s) {
  auto too_far = mx::logical_or(mx::greater_equal(b, mx::array(int_bits(a.dtype()), b.dtype()), s),
                                mx::less(b, mx::array(0, b.dtype()), s), s);
  auto safe = mx::where(too_far, mx::zeros_like(b, s), b, s);
  auto fill = is_signed_int(a.dtype())
                  ? mx::where(mx::less(a, mx::array(0, a.dtype()), s), mx::full_like(a, mx::array(-1, a.dtype()), s),
                              mx::zeros_like(a, s), s)
                  : mx::zeros_like(a, s);
  return mx::where(too_far, fill, mx::right_shift(a, safe, s), s);
}

// ---- types ----

// |z| of a complex tensor. mx::abs ends in an AsType from complex64 to
// float32, which MLX's CUDA fused-kernel generator cannot compile ("no
// suitable conversion function from complex64_t to float"): a compiled defn
// on the GPU taking a complex norm raised. There it is computed from the
// parts instead, as hypot does: max * sqrt(1 + (min / max)^2), 0 for 0, inf
// when a part is infinite (also with a NaN part), NaN from a NaN part.
mx::array emlx_abs(const mx::array &x, SD s) {
  if (x.dtype() != mx::complex64 || mx::to_stream(s).device == mx::Device::cpu) return mx::abs(x, s);
  auto a = mx::abs(mx::real(x, s), s), b = mx::abs(mx::imag(x, s), s);
  auto hi = mx::maximum(a, b, s), lo = mx::minimum(a, b, s);
  auto r = mx::divide(lo, hi, s);
  auto h = mx::multiply(hi, mx::sqrt(mx::add(mx::array(1.0f), mx::multiply(r, r, s), s), s), s);
  auto zero = mx::array(0.0f);
  h = mx::where(mx::equal(hi, zero, s), zero, h, s);
  auto inf = mx::logical_or(mx::isinf(a, s), mx::isinf(b, s), s);
  return mx::where(inf, mx::array(INFINITY, mx::float32), h, s);
}

mx::array emlx_as_type(const mx::array &x, mx::Dtype d, SD s) {
  if (x.dtype() == d) return x;
  if (is_complex(x.dtype()) && !is_complex(d)) return mx::astype(mx::real(x, s), d, s);
  if (is_float(x.dtype()) && is_int(d)) {
    // As Nx: NaN becomes 0, +inf the type's maximum, -inf its minimum.
    auto nan = mx::isnan(x, s);
    auto finite = mx::where(mx::isfinite(x, s), x, mx::zeros_like(x, s), s);
    // Through int64 (truncation), then to the target width, which wraps as
    // Nx does (-1.0 -> 255 in u8); a direct GPU conversion would saturate.
    auto cast = d == mx::int64 || d == mx::uint64 ? mx::astype(finite, d, s)
                                                  : mx::astype(mx::astype(finite, mx::int64, s), d, s);
    auto hi = is_signed_int(d) ? mx::array(d.size() == 8 ? INT64_MAX : (int64_t(1) << (d.size() * 8 - 1)) - 1, d)
                               : mx::array(d.size() == 8 ? UINT64_MAX : (uint64_t(1) << (d.size() * 8)) - 1, d);
    auto lo = is_signed_int(d) ? mx::array(d.size() == 8 ? INT64_MIN : -(int64_t(1) << (d.size() * 8 - 1)), d)
                               : mx::array(0, d);
    auto r = mx::where(mx::isposinf(x, s), hi, cast, s);
    r = mx::where(mx::isneginf(x, s), lo, r, s);
    return mx::where(nan, mx::zeros_like(r, s), r, s);
  }
  return mx::astype(x, d, s);
}

// ---- reductions ----

// Half-precision sums accumulate in float32 (the GPU's reduction would
// accumulate in the half type), rounded once at the end. Small float32 sums
// on the CPU (up to kSmallF32Sum elements) accumulate in float64 and round
// once, as Nx.BinaryBackend does; MLX's float32 reduction rounds at every
// step, in its own order.
constexpr size_t kSmallF32Sum = 16384;

mx::array emlx_sum(const mx::array &x, const std::vector<int> &axes, bool keep, SD s) {
  if (x.dtype() == mx::float32 && x.size() <= kSmallF32Sum && mx::to_stream(s).device == mx::Device::cpu)
    return mx::astype(mx::sum(mx::astype(x, mx::float64, s), axes, keep, s), mx::float32, s);
  if (x.dtype() != mx::float16 && x.dtype() != mx::bfloat16) return mx::sum(x, axes, keep, s);
  return mx::astype(mx::sum(mx::astype(x, mx::float32, s), axes, keep, s), x.dtype(), s);
}

mx::array emlx_all(const mx::array &x, const std::vector<int> &axes, bool keep, SD s) {
  return mx::all(truthy(x, s), axes, keep, s);
}
mx::array emlx_any(const mx::array &x, const std::vector<int> &axes, bool keep, SD s) {
  return mx::any(truthy(x, s), axes, keep, s);
}

// argmax/argmin; axis < 0 means over the flattened tensor. NaN counts as the
// extreme value (Nx's order), and tie_high picks the last of equal values.
mx::array emlx_argext(const mx::array &x0, int64_t axis, bool keep, bool tie_high, bool is_max, SD s) {
  mx::array x = x0;
  int ax = static_cast<int>(axis);
  if (axis < 0) {
    x = mx::reshape(x, {-1}, s);
    ax = 0;
  }
  if (is_float(x.dtype())) {
    // NaN wins: map it to +inf (max) or -inf (min) after noting where it is.
    // Of several NaNs, the last one, whatever the tie break (Nx.BinaryBackend
    // takes each NaN it meets).
    auto nan = mx::isnan(x, s);
    auto any_nan = mx::any(nan, std::vector<int>{ax}, true, s);
    auto inf = mx::array(is_max ? INFINITY : -INFINITY, x.dtype());
    auto x_clean = mx::where(nan, inf, x, s);
    mx::array base = tie_high ? mx::flip(x_clean, ax, s) : x_clean;
    auto idx = is_max ? mx::argmax(base, ax, true, s) : mx::argmin(base, ax, true, s);
    if (tie_high) idx = mx::subtract(mx::array(x.shape(ax) - 1, idx.dtype()), idx, s);
    auto last_nan = mx::argmax(mx::flip(nan, ax, s), ax, true, s);
    last_nan = mx::subtract(mx::array(x.shape(ax) - 1, last_nan.dtype()), last_nan, s);
    idx = mx::where(any_nan, last_nan, idx, s);
    if (!keep) idx = mx::squeeze(idx, std::vector<int>{ax}, s);
    if (axis < 0) idx = mx::reshape(idx, {}, s);
    return idx;
  }
  mx::array base = tie_high ? mx::flip(x, ax, s) : x;
  auto idx = is_max ? mx::argmax(base, ax, true, s) : mx::argmin(base, ax, true, s);
  if (tie_high) idx = mx::subtract(mx::array(x.shape(ax) - 1, idx.dtype()), idx, s);
  if (!keep) idx = mx::squeeze(idx, std::vector<int>{ax}, s);
  if (axis < 0) idx = mx::reshape(idx, {}, s);
  return idx;
}

// ---- cumulative ----

// MLX's cummax/cummin lose NaN for half types: run them in float32.
mx::array emlx_cumext(const mx::array &x, int axis, bool reverse, bool is_max, SD s) {
  bool half = x.dtype() == mx::float16 || x.dtype() == mx::bfloat16;
  auto y = half ? mx::astype(x, mx::float32, s) : x;
  auto r = is_max ? mx::cummax(y, axis, reverse, true, s) : mx::cummin(y, axis, reverse, true, s);
  return half ? mx::astype(r, x.dtype(), s) : r;
}

}  // namespace emlx
