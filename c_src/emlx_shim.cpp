// The thin C++ shim over MLX. Every entry point is extern "C" and catches
// every exception; nothing C++ crosses into the NIF.

#include "emlx_shim.h"

#include <mlx/mlx.h>
#include <mlx/version.h>

#include <cmath>
#include <cstring>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace mx = mlx::core;

struct emlx_arr {
  mx::array a;
  explicit emlx_arr(mx::array x) : a(std::move(x)) {}
};

struct emlx_stream {
  mx::Stream s;
  explicit emlx_stream(mx::Stream x) : s(x) {}
};

namespace {

thread_local std::string last_error;

// A check of ours failed: reported as ArgumentError, not NIFError.
struct arg_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const mx::Dtype dtype_table[EMLX_DTYPE_COUNT] = {
    mx::bool_,  mx::uint8,   mx::uint16,   mx::uint32,   mx::uint64,
    mx::int8,   mx::int16,   mx::int32,    mx::int64,    mx::float16,
    mx::bfloat16, mx::float32, mx::float64, mx::complex64};

mx::Dtype to_dtype(int code) {
  if (code < 0 || code >= EMLX_DTYPE_COUNT) throw arg_error("unknown element type code");
  return dtype_table[code];
}

int from_dtype(mx::Dtype d) {
  for (int i = 0; i < EMLX_DTYPE_COUNT; i++)
    if (dtype_table[i] == d) return i;
  return -1;
}

template <typename F>
emlx_status guard(F &&f) {
  try {
    f();
    return EMLX_OK;
  } catch (const arg_error &e) {
    last_error = e.what();
    return EMLX_ERR_ARG;
  } catch (const std::bad_alloc &) {
    last_error = "out of memory";
    return EMLX_ERR_MLX;
  } catch (const std::exception &e) {
    last_error = e.what();
    return EMLX_ERR_MLX;
  } catch (...) {
    last_error = "unknown C++ exception in MLX";
    return EMLX_ERR_MLX;
  }
}

// ---- argument accessors ----

mx::Shape to_shape(const emlx_arg &a) {
  mx::Shape s;
  for (int i = 0; i < a.u.ints.n; i++) s.push_back(static_cast<int32_t>(a.u.ints.v[i]));
  return s;
}

std::vector<int> to_axes(const emlx_arg &a) {
  std::vector<int> s;
  for (int i = 0; i < a.u.ints.n; i++) s.push_back(static_cast<int>(a.u.ints.v[i]));
  return s;
}

std::vector<int64_t> to_i64s(const emlx_arg &a) {
  return std::vector<int64_t>(a.u.ints.v, a.u.ints.v + a.u.ints.n);
}

std::vector<mx::array> to_arrays(const emlx_arg &a) {
  std::vector<mx::array> v;
  v.reserve(a.u.arrs.n);
  for (int i = 0; i < a.u.arrs.n; i++) v.push_back(a.u.arrs.v[i]->a);
  return v;
}

using SD = mx::StreamOrDevice;

bool is_float(mx::Dtype d) { return mx::issubdtype(d, mx::floating); }
bool is_complex(mx::Dtype d) { return d == mx::complex64; }
bool is_signed_int(mx::Dtype d) { return mx::issubdtype(d, mx::signedinteger); }
bool is_int(mx::Dtype d) { return mx::issubdtype(d, mx::integer); }

mx::array truthy(const mx::array &x, SD s) {
  if (x.dtype() == mx::bool_) return x;
  return mx::not_equal(x, mx::array(0, x.dtype()), s);
}

// ---- element-wise helpers with Nx semantics ----

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

mx::array emlx_cbrt(const mx::array &x, SD s) {
  auto third = mx::array(1.0 / 3.0, x.dtype());
  return mx::multiply(mx::sign(x, s), mx::power(mx::abs(x, s), third, s), s);
}

mx::array emlx_erfc(const mx::array &x, SD s) {
  return mx::subtract(mx::array(1.0, x.dtype()), mx::erf(x, s), s);
}

// Nx rounds half away from zero; MLX rounds half to even.
mx::array emlx_round(const mx::array &x, SD s) {
  if (!is_float(x.dtype())) return x;
  auto frac = mx::abs(mx::subtract(x, mx::trunc(x, s), s), s);
  auto away = mx::add(x, mx::multiply(mx::sign(x, s), mx::array(0.5, x.dtype()), s), s);
  return mx::where(mx::equal(frac, mx::array(0.5, x.dtype()), s), away, mx::round(x, 0, s), s);
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
  if (is_complex(x.dtype())) return mx::arctan2(mx::imag(x, s), mx::real(x, s), s);
  auto f = is_float(x.dtype()) ? x : mx::astype(x, mx::float32, s);
  auto pi = mx::array(M_PI, f.dtype());
  auto zero = mx::array(0.0, f.dtype());
  auto r = mx::where(mx::less(f, zero, s), pi, zero, s);
  return mx::where(mx::isnan(f, s), f, r, s);
}

int int_bits(mx::Dtype d) { return static_cast<int>(d.size()) * 8; }

mx::Dtype unsigned_of(mx::Dtype d) {
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
  return mx::power(a, b, s);
}

// A divisor that cannot trap: 0 becomes 1 and (signed) -1 becomes 1.
mx::array safe_divisor(const mx::array &b, SD s) {
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
    auto fix = mx::logical_and(mx::not_equal(r, zero, s),
                               mx::not_equal(mx::less(a, zero, s), mx::less(bs, zero, s), s), s);
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

// ---- reductions ----

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
    auto nan = mx::isnan(x, s);
    auto any_nan = mx::any(nan, std::vector<int>{ax}, true, s);
    auto inf = mx::array(is_max ? INFINITY : -INFINITY, x.dtype());
    auto x_clean = mx::where(nan, inf, x, s);
    auto pick_nan = nan;  // first/last NaN along the axis when any
    mx::array base = tie_high ? mx::flip(x_clean, ax, s) : x_clean;
    mx::array nan_base = tie_high ? mx::flip(pick_nan, ax, s) : pick_nan;
    auto idx = is_max ? mx::argmax(base, ax, true, s) : mx::argmin(base, ax, true, s);
    auto nidx = mx::argmax(nan_base, ax, true, s);
    idx = mx::where(any_nan, nidx, idx, s);
    if (tie_high) idx = mx::subtract(mx::array(x.shape(ax) - 1, idx.dtype()), idx, s);
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

// ---- creation ----

mx::array emlx_iota(const mx::Shape &shape, int64_t axis, mx::Dtype d, SD s) {
  if (axis < 0) {
    size_t n = 1;
    for (auto v : shape) n *= static_cast<size_t>(v);
    return mx::reshape(mx::arange(0.0, static_cast<double>(n), 1.0, d, s), shape, s);
  }
  mx::Shape one(shape.size(), 1);
  one[axis] = shape[axis];
  auto r = mx::reshape(mx::arange(0.0, static_cast<double>(shape[axis]), 1.0, d, s), one, s);
  return mx::broadcast_to(r, shape, s);
}

mx::array emlx_eye(const mx::Shape &shape, mx::Dtype d, SD s) {
  if (shape.size() < 2) throw arg_error("eye expects at least two dimensions");
  int n = shape[shape.size() - 2], m = shape[shape.size() - 1];
  return mx::broadcast_to(mx::eye(n, m, 0, d, s), shape, s);
}

mx::array emlx_as_type(const mx::array &x, mx::Dtype d, SD s) {
  if (x.dtype() == d) return x;
  if (is_complex(x.dtype()) && !is_complex(d)) return mx::astype(mx::real(x, s), d, s);
  if (is_float(x.dtype()) && is_int(d)) {
    // As Nx: NaN becomes 0, +inf the type's maximum, -inf its minimum.
    auto nan = mx::isnan(x, s);
    auto cast = mx::astype(mx::where(mx::isfinite(x, s), x, mx::zeros_like(x, s), s), d, s);
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

// ---- shape and layout ----

mx::array emlx_broadcast(const mx::array &x, const mx::Shape &shape, const std::vector<int> &axes, SD s) {
  if (axes.size() != x.ndim()) throw arg_error("broadcast axes must match the tensor rank");
  mx::Shape mid(shape.size(), 1);
  for (size_t i = 0; i < axes.size(); i++) {
    if (axes[i] < 0 || axes[i] >= static_cast<int>(shape.size())) throw arg_error("broadcast axis out of range");
    mid[axes[i]] = x.shape(static_cast<int>(i));
  }
  return mx::broadcast_to(mx::reshape(x, mid, s), shape, s);
}

mx::array emlx_pad(const mx::array &x0, const mx::array &value, const std::vector<int64_t> &lo,
                   const std::vector<int64_t> &hi, const std::vector<int64_t> &interior, SD s) {
  int nd = x0.ndim();
  if (static_cast<int>(lo.size()) != nd || static_cast<int>(hi.size()) != nd ||
      static_cast<int>(interior.size()) != nd)
    throw arg_error("pad config must have one entry per dimension");
  auto v = mx::astype(value, x0.dtype(), s);
  mx::array x = x0;
  for (int ax = 0; ax < nd; ax++) {
    int64_t in = interior[ax];
    if (in < 0) throw arg_error("interior padding must be non-negative");
    if (in > 0 && x.shape(ax) > 1) {
      int d = x.shape(ax);
      auto e = mx::expand_dims(x, ax + 1, s);
      e = mx::pad(e, {ax + 1}, {0}, {static_cast<int>(in)}, v, "constant", s);
      mx::Shape flat = x.shape();
      flat[ax] = d * static_cast<int>(in + 1);
      e = mx::reshape(e, flat, s);
      mx::Shape start(nd, 0), stop = e.shape();
      stop[ax] = d + (d - 1) * static_cast<int>(in);
      x = mx::slice(e, start, stop, s);
    }
  }
  std::vector<int> axes;
  mx::Shape plo, phi;
  for (int ax = 0; ax < nd; ax++) {
    axes.push_back(ax);
    plo.push_back(static_cast<int>(lo[ax] > 0 ? lo[ax] : 0));
    phi.push_back(static_cast<int>(hi[ax] > 0 ? hi[ax] : 0));
  }
  if (nd > 0) x = mx::pad(x, axes, plo, phi, v, "constant", s);
  mx::Shape start(nd, 0), stop = x.shape();
  bool cut = false;
  for (int ax = 0; ax < nd; ax++) {
    if (lo[ax] < 0) start[ax] = static_cast<int>(-lo[ax]), cut = true;
    if (hi[ax] < 0) stop[ax] = static_cast<int>(stop[ax] + hi[ax]), cut = true;
    if (stop[ax] < start[ax]) stop[ax] = start[ax];
  }
  return cut ? mx::slice(x, start, stop, s) : x;
}

mx::array emlx_reverse(const mx::array &x, const std::vector<int> &axes, SD s) {
  mx::array r = x;
  for (int ax : axes) r = mx::flip(r, ax, s);
  return r;
}

// Static slice of `lengths` input elements from `start`, every `stride`
// (Nx's lengths count input elements, before striding).
mx::array emlx_slice(const mx::array &x, const mx::Shape &start, const mx::Shape &lengths, const mx::Shape &strides,
                     SD s) {
  mx::Shape stop;
  for (size_t i = 0; i < start.size(); i++) stop.push_back(start[i] + lengths[i]);
  return mx::slice(x, start, stop, strides, s);
}

// Dynamic starts (scalar arrays) clamped into range, as Nx does.
mx::array clamp_starts(const std::vector<mx::array> &starts, const mx::Shape &dims, const mx::Shape &sizes, SD s) {
  std::vector<mx::array> parts;
  for (size_t i = 0; i < starts.size(); i++) {
    auto st = mx::reshape(mx::astype(starts[i], mx::int32, s), {1}, s);
    int32_t hi = dims[i] - sizes[i];
    parts.push_back(mx::clip(st, mx::array(0, mx::int32), mx::array(hi < 0 ? 0 : hi, mx::int32), s));
  }
  return mx::concatenate(parts, 0, s);
}

mx::array emlx_dynamic_slice(const mx::array &x, const std::vector<mx::array> &starts, const mx::Shape &lengths,
                             const mx::Shape &strides, SD s) {
  if (starts.size() != x.ndim()) throw arg_error("slice expects one start per dimension");
  std::vector<int> axes;
  bool strided = false;
  for (int i = 0; i < static_cast<int>(x.ndim()); i++) {
    axes.push_back(i);
    if (strides[i] != 1) strided = true;
  }
  auto st = clamp_starts(starts, x.shape(), lengths, s);
  auto r = mx::slice(x, st, axes, lengths, s);
  if (!strided) return r;
  mx::Shape zero(x.ndim(), 0);
  return emlx_slice(r, zero, lengths, strides, s);
}

mx::array emlx_put_slice(const mx::array &x, const mx::array &upd, const std::vector<mx::array> &starts, SD s) {
  if (starts.size() != x.ndim()) throw arg_error("put_slice expects one start per dimension");
  std::vector<int> axes;
  for (int i = 0; i < static_cast<int>(x.ndim()); i++) axes.push_back(i);
  auto st = clamp_starts(starts, x.shape(), upd.shape(), s);
  return mx::slice_update(x, mx::astype(upd, x.dtype(), s), st, axes, s);
}

mx::array emlx_select(const mx::array &pred, const mx::array &a, const mx::array &b, SD s) {
  return mx::where(truthy(pred, s), a, b, s);
}

// ---- dot ----

mx::array emlx_dot(const mx::array &a0, const std::vector<int> &ca, const std::vector<int> &ba, const mx::array &b0,
                   const std::vector<int> &cb, const std::vector<int> &bb, std::optional<mx::Dtype> out, SD s) {
  if (ca.size() != cb.size() || ba.size() != bb.size()) throw arg_error("dot axes lists must have equal lengths");
  mx::Dtype t = out ? *out : mx::promote_types(a0.dtype(), b0.dtype());
  auto a = mx::astype(a0, t, s), b = mx::astype(b0, t, s);
  auto free_axes = [](int nd, const std::vector<int> &c, const std::vector<int> &bt) {
    std::vector<int> f;
    for (int i = 0; i < nd; i++) {
      bool used = false;
      for (int v : c) used |= (v == i);
      for (int v : bt) used |= (v == i);
      if (!used) f.push_back(i);
    }
    return f;
  };
  auto fa = free_axes(a.ndim(), ca, ba), fb = free_axes(b.ndim(), cb, bb);
  auto prod = [](const mx::array &x, const std::vector<int> &axes) {
    int64_t p = 1;
    for (int v : axes) p *= x.shape(v);
    return static_cast<int32_t>(p);
  };
  int32_t B = prod(a, ba), M = prod(a, fa), K = prod(a, ca), N = prod(b, fb);
  if (K != prod(b, cb)) throw arg_error("dot contraction dimensions differ");
  std::vector<int> pa(ba), pb(bb);
  pa.insert(pa.end(), fa.begin(), fa.end());
  pa.insert(pa.end(), ca.begin(), ca.end());
  pb.insert(pb.end(), cb.begin(), cb.end());
  pb.insert(pb.end(), fb.begin(), fb.end());
  auto a3 = mx::reshape(mx::transpose(a, pa, s), {B, M, K}, s);
  auto b3 = mx::reshape(mx::transpose(b, pb, s), {B, K, N}, s);
  mx::array r = is_float(t) || is_complex(t)
                    ? mx::matmul(a3, b3, s)
                    // MLX has no integer matmul: multiply and sum, exact with wrap-around.
                    : mx::sum(mx::multiply(mx::reshape(a3, {B, M, K, 1}, s), mx::reshape(b3, {B, 1, K, N}, s), s),
                              std::vector<int>{2}, false, s);
  mx::Shape shape;
  for (int v : ba) shape.push_back(a.shape(v));
  for (int v : fa) shape.push_back(a.shape(v));
  for (int v : fb) shape.push_back(b.shape(v));
  return mx::astype(mx::reshape(r, shape, s), t, s);
}

// ---- sort ----

// MLX sorts are stable and put NaN last. Descending order reverses the
// reversed input's ascending order, which keeps ties in input order and
// puts NaN first, as Nx does.
mx::array emlx_sort(const mx::array &x, int axis, bool desc, bool want_indices, SD s) {
  if (x.ndim() == 0) return want_indices ? mx::array(0, mx::int32) : x;
  if (!desc) return want_indices ? mx::argsort(x, axis, s) : mx::sort(x, axis, s);
  auto xr = mx::flip(x, axis, s);
  if (!want_indices) return mx::flip(mx::sort(xr, axis, s), axis, s);
  auto idx = mx::flip(mx::argsort(xr, axis, s), axis, s);
  return mx::subtract(mx::array(x.shape(axis) - 1, idx.dtype()), idx, s);
}

// ---- gather / scatter ----

// Indices are clamped into range, as Nx documents for gather: MLX does not
// check bounds, and an index outside the tensor must never read or write
// outside its memory.
mx::array clamp_index(const mx::array &idx, int dim, SD s) {
  if (!is_int(idx.dtype())) throw arg_error("indices must be integers");
  auto i = mx::astype(idx, mx::int64, s);
  return mx::clip(i, mx::array(int64_t(0)), mx::array(int64_t(dim > 0 ? dim - 1 : 0)), s);
}

std::vector<mx::array> split_indices(const mx::array &x, const mx::array &idx, const std::vector<int> &axes, SD s) {
  if (idx.ndim() < 1) throw arg_error("indices must have at least one dimension");
  int k = idx.shape(-1);
  if (k != static_cast<int>(axes.size())) throw arg_error("the last dimension of indices must match the number of axes");
  std::vector<mx::array> parts;
  for (int i = 0; i < k; i++) {
    if (axes[i] < 0 || axes[i] >= static_cast<int>(x.ndim())) throw arg_error("axis out of range");
    parts.push_back(clamp_index(mx::take(idx, i, idx.ndim() - 1, s), x.shape(axes[i]), s));
  }
  return parts;
}

mx::array emlx_gather(const mx::array &x, const mx::array &idx, const std::vector<int> &axes, SD s) {
  auto parts = split_indices(x, idx, axes, s);
  mx::Shape sizes = x.shape();
  for (int ax : axes) sizes[ax] = 1;
  auto g = mx::gather(x, parts, axes, sizes, s);
  mx::Shape out(idx.shape().begin(), idx.shape().end() - 1);
  for (int i = 0; i < static_cast<int>(x.ndim()); i++) {
    bool indexed = false;
    for (int ax : axes) indexed |= (ax == i);
    if (!indexed) out.push_back(x.shape(i));
  }
  return mx::reshape(g, out, s);
}

mx::array emlx_indexed(const mx::array &x, const mx::array &idx, const mx::array &upd, const std::vector<int> &axes,
                       bool add, SD s) {
  auto parts = split_indices(x, idx, axes, s);
  mx::Shape ushape(idx.shape().begin(), idx.shape().end() - 1);
  for (int i = 0; i < static_cast<int>(x.ndim()); i++) {
    bool indexed = false;
    for (int ax : axes) indexed |= (ax == i);
    ushape.push_back(indexed ? 1 : x.shape(i));
  }
  auto u = mx::reshape(mx::astype(upd, x.dtype(), s), ushape, s);
  return add ? mx::scatter_add(x, parts, u, axes, s) : mx::scatter(x, parts, u, axes, s);
}

mx::array emlx_take(const mx::array &x, const mx::array &idx, int axis, SD s) {
  if (axis < 0 || axis >= static_cast<int>(x.ndim())) throw arg_error("axis out of range");
  return mx::take(x, clamp_index(idx, x.shape(axis), s), axis, s);
}

mx::array emlx_take_along_axis(const mx::array &x, const mx::array &idx, int axis, SD s) {
  if (axis < 0 || axis >= static_cast<int>(x.ndim())) throw arg_error("axis out of range");
  return mx::take_along_axis(x, clamp_index(idx, x.shape(axis), s), axis, s);
}

// ---- the op table ----

enum {
#define UNARY(n, f) OP_##n,
#define UNARY_KEEP(n, f) OP_##n,
#define BINARY(n, f) OP_##n,
#define BINARY_KEEP(n, f) OP_##n,
#define REDUCE(n, f) OP_##n,
#define OP(n, sig, e) OP_##n,
#define OPN(n, sig, e) OP_##n,
#include "emlx_ops.def"
#undef UNARY
#undef UNARY_KEEP
#undef BINARY
#undef BINARY_KEEP
#undef REDUCE
#undef OP
#undef OPN
  OP_COUNT
};

struct op_info {
  const char *name;
  const char *sig;
};

const op_info op_table[] = {
#define UNARY(n, f) {#n, "a"},
#define UNARY_KEEP(n, f) {#n, "a"},
#define BINARY(n, f) {#n, "aa"},
#define BINARY_KEEP(n, f) {#n, "aa"},
#define REDUCE(n, f) {#n, "aIb"},
#define OP(n, sig, e) {#n, sig},
#define OPN(n, sig, e) {#n, sig},
#include "emlx_ops.def"
#undef UNARY
#undef UNARY_KEEP
#undef BINARY
#undef BINARY_KEEP
#undef REDUCE
#undef OP
#undef OPN
};

std::vector<mx::array> run_op(int op, const mx::Stream &stream, const emlx_arg *args, std::optional<mx::Dtype> out_type) {
#define ARR(k) (args[k].u.arr->a)
#define ARRS(k) to_arrays(args[k])
#define INT(k) (args[k].u.i)
#define SHAPE(k) to_shape(args[k])
#define AXES(k) to_axes(args[k])
#define INTS(k) to_i64s(args[k])
#define FLT(k) (args[k].u.f)
#define DT(k) to_dtype(args[k].u.dtype)
#define FLAG(k) (args[k].u.b != 0)
#define NUM(k) (args[k].u.scalar)
#define STR(k) std::string(args[k].u.str)
#define S stream
#define OUT out_type
  auto cast = [&](const mx::array &x) { return OUT ? mx::astype(x, *OUT, S) : x; };
  switch (op) {
#define UNARY(n, f) \
  case OP_##n:      \
    return {f(cast(ARR(0)), S)};
#define UNARY_KEEP(n, f) \
  case OP_##n:           \
    return {f(ARR(0), S)};
#define BINARY(n, f) \
  case OP_##n:       \
    return {f(cast(ARR(0)), cast(ARR(1)), S)};
#define BINARY_KEEP(n, f) \
  case OP_##n:            \
    return {f(ARR(0), ARR(1), S)};
#define REDUCE(n, f) \
  case OP_##n:       \
    return {f(cast(ARR(0)), AXES(1), FLAG(2), S)};
#define OP(n, sig, e) \
  case OP_##n:        \
    return {e};
#define OPN(n, sig, e) \
  case OP_##n:         \
    return e;
#include "emlx_ops.def"
#undef UNARY
#undef UNARY_KEEP
#undef BINARY
#undef BINARY_KEEP
#undef REDUCE
#undef OP
#undef OPN
    default:
      throw arg_error("unknown op");
  }
#undef ARR
#undef ARRS
#undef INT
#undef SHAPE
#undef AXES
#undef INTS
#undef FLT
#undef DT
#undef FLAG
#undef NUM
#undef STR
#undef S
#undef OUT
}

}  // namespace

extern "C" {

int emlx_op_count(void) { return OP_COUNT; }
const char *emlx_op_name(int op) { return op >= 0 && op < OP_COUNT ? op_table[op].name : nullptr; }
const char *emlx_op_signature(int op) { return op >= 0 && op < OP_COUNT ? op_table[op].sig : nullptr; }

const char *emlx_last_error(void) { return last_error.c_str(); }

emlx_status emlx_op_run(int op, emlx_stream *s, const emlx_arg *args, int nargs, int out_dtype, emlx_arr **outs,
                        int *nouts) {
  *nouts = 0;
  return guard([&] {
    if (op < 0 || op >= OP_COUNT) throw arg_error("unknown op");
    if (static_cast<int>(std::strlen(op_table[op].sig)) != nargs) throw arg_error("wrong number of op arguments");
    std::optional<mx::Dtype> out;
    if (out_dtype >= 0) out = to_dtype(out_dtype);
    auto results = run_op(op, s->s, args, out);
    if (results.size() > EMLX_MAX_OUTS) throw arg_error("too many op results");
    std::vector<emlx_arr *> made;
    try {
      for (auto &r : results) {
        if (out && r.dtype() != *out) r = emlx_as_type(r, *out, s->s);
        made.push_back(new emlx_arr(std::move(r)));
      }
    } catch (...) {
      for (auto *m : made) delete m;
      throw;
    }
    for (size_t i = 0; i < made.size(); i++) outs[i] = made[i];
    *nouts = static_cast<int>(made.size());
  });
}

int emlx_device_available(emlx_device dev) {
  try {
    return mx::is_available(dev == EMLX_DEV_GPU ? mx::Device::gpu : mx::Device::cpu) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

emlx_status emlx_stream_new(emlx_device dev, emlx_stream **out) {
  *out = nullptr;
  return guard([&] {
    auto d = dev == EMLX_DEV_GPU ? mx::Device::gpu : mx::Device::cpu;
    if (!mx::is_available(d)) throw std::runtime_error(dev == EMLX_DEV_GPU ? "the GPU device is not available in this MLX build" : "the CPU device is not available");
    auto st = mx::new_stream(d);
    mx::set_default_stream(st);
    *out = new emlx_stream(st);
  });
}

void emlx_stream_free(emlx_stream *s) { delete s; }

emlx_status emlx_stream_synchronize(emlx_stream *s) {
  return guard([&] { mx::synchronize(s->s); });
}

emlx_arr *emlx_arr_retain(const emlx_arr *a) {
  try {
    return new emlx_arr(a->a);
  } catch (...) {
    return nullptr;
  }
}

void emlx_arr_free(emlx_arr *a) {
  try {
    delete a;
  } catch (...) {
  }
}

int emlx_arr_ndim(const emlx_arr *a) { return static_cast<int>(a->a.ndim()); }

void emlx_arr_shape(const emlx_arr *a, int64_t *dims) {
  for (size_t i = 0; i < a->a.ndim(); i++) dims[i] = a->a.shape(static_cast<int>(i));
}

void emlx_arr_strides(const emlx_arr *a, int64_t *strides) {
  for (size_t i = 0; i < a->a.ndim(); i++) strides[i] = a->a.strides()[i];
}

int emlx_arr_dtype(const emlx_arr *a) { return from_dtype(a->a.dtype()); }

int emlx_arr_is_available(const emlx_arr *a) {
  try {
    return a->a.is_available() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

size_t emlx_dtype_size(int dtype) {
  if (dtype < 0 || dtype >= EMLX_DTYPE_COUNT) return 0;
  return dtype_table[dtype].size();
}

emlx_status emlx_arr_from_bytes(emlx_stream *s, const void *data, size_t nbytes, const int64_t *dims, int ndim,
                                int dtype, emlx_arr **out) {
  *out = nullptr;
  (void)s;
  return guard([&] {
    mx::Shape shape;
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
      shape.push_back(static_cast<int32_t>(dims[i]));
      count *= static_cast<size_t>(dims[i]);
    }
    auto d = to_dtype(dtype);
    if (count * d.size() != nbytes) throw arg_error("binary size does not match the shape and type");
    mx::array a(mx::allocator::malloc(nbytes > 0 ? nbytes : 1), shape, d);
    if (nbytes > 0) std::memcpy(a.data<char>(), data, nbytes);
    *out = new emlx_arr(std::move(a));
  });
}

emlx_status emlx_arr_from_external(void *data, const int64_t *dims, int ndim, int dtype, void (*deleter)(void *ctx),
                                   void *ctx, emlx_arr **out) {
  *out = nullptr;
  return guard([&] {
    mx::Shape shape;
    for (int i = 0; i < ndim; i++) shape.push_back(static_cast<int32_t>(dims[i]));
    auto d = to_dtype(dtype);
    mx::array a(data, shape, d, [deleter, ctx](void *) { deleter(ctx); });
    *out = new emlx_arr(std::move(a));
  });
}

emlx_status emlx_eval(emlx_stream *s, emlx_arr **arrs, int n) {
  (void)s;
  return guard([&] {
    std::vector<mx::array> v;
    for (int i = 0; i < n; i++) v.push_back(arrs[i]->a);
    mx::eval(v);
  });
}

emlx_status emlx_arr_host_view(emlx_stream *s, const emlx_arr *a, emlx_arr **view, const void **data,
                               size_t *nbytes) {
  *view = nullptr;
  return guard([&] {
    mx::array x = a->a;
    x.eval();
    if (!x.flags().row_contiguous) {
      x = mx::contiguous(x, false, s->s);
      x.eval();
    }
    mx::synchronize(s->s);
    auto *v = new emlx_arr(x);
    *data = v->a.data<void>();
    *nbytes = v->a.nbytes();
    *view = v;
  });
}

void emlx_memory_info(size_t *active, size_t *peak, size_t *cache) {
  *active = mx::get_active_memory();
  *peak = mx::get_peak_memory();
  *cache = mx::get_cache_memory();
}

void emlx_reset_peak_memory(void) { mx::reset_peak_memory(); }
void emlx_clear_cache(void) { mx::clear_cache(); }
size_t emlx_set_cache_limit(size_t limit) { return mx::set_cache_limit(limit); }
size_t emlx_set_memory_limit(size_t limit) { return mx::set_memory_limit(limit); }

void emlx_shim_init(void) {}

const char *emlx_mlx_version(void) { return mx::version(); }

}  // extern "C"
