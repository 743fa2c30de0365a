// The thin C++ shim over MLX. Every entry point is extern "C" and catches
// every exception; nothing C++ crosses into the NIF.

#include "emlx_shim.h"

#include <mlx/backend/cpu/encoder.h>
#include <mlx/mlx.h>
#include <mlx/primitives.h>
#include <mlx/version.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
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
  if (x.dtype() == mx::complex64) {
    auto zero = mx::array(0.0f);
    return mx::logical_or(mx::not_equal(mx::real(x, s), zero, s), mx::not_equal(mx::imag(x, s), zero, s), s);
  }
  return mx::not_equal(x, mx::zeros({}, x.dtype(), s), s);
}

// ---- float64 math on the CPU ----
//
// MLX's CPU kernels for several transcendental functions use float32-accurate
// approximations even for float64 inputs. For float64 these ops run as an
// MLX primitive of ours whose CPU kernel calls the C library in double
// precision, scheduled on the stream's CPU encoder like MLX's own kernels.

enum f64_fn { F64_EXP, F64_EXPM1, F64_LOG1P, F64_SIN, F64_COS, F64_TAN, F64_SINH, F64_COSH, F64_ASIN, F64_ACOS,
              F64_ATAN, F64_ASINH, F64_ACOSH, F64_ATANH, F64_ERF, F64_ERFC, F64_ERFINV, F64_SIGMOID, F64_CBRT };

double erfinv64(double y) {
  if (std::isnan(y) || y < -1.0 || y > 1.0) return NAN;
  if (y == 1.0) return INFINITY;
  if (y == -1.0) return -INFINITY;
  // Giles' single-precision approximation as a start, then Newton steps on erf.
  double w = -std::log((1.0 - y) * (1.0 + y)), x;
  if (w < 5.0) {
    w -= 2.5;
    double p = 2.81022636e-08;
    p = 3.43273939e-07 + p * w; p = -3.5233877e-06 + p * w; p = -4.39150654e-06 + p * w;
    p = 0.00021858087 + p * w; p = -0.00125372503 + p * w; p = -0.00417768164 + p * w;
    p = 0.246640727 + p * w; p = 1.50140941 + p * w;
    x = p * y;
  } else {
    w = std::sqrt(w) - 3.0;
    double p = -0.000200214257;
    p = 0.000100950558 + p * w; p = 0.00134934322 + p * w; p = -0.00367342844 + p * w;
    p = 0.00573950773 + p * w; p = -0.0076224613 + p * w; p = 0.00943887047 + p * w;
    p = 1.00167406 + p * w; p = 2.83297682 + p * w;
    x = p * y;
  }
  for (int i = 0; i < 3; i++) {
    double err = std::erf(x) - y;
    x -= err / (2.0 / std::sqrt(M_PI) * std::exp(-x * x));
  }
  return x;
}

double f64_apply(int fn, double v) {
  switch (fn) {
    case F64_EXP: return std::exp(v);
    case F64_EXPM1: return std::expm1(v);
    case F64_LOG1P: return std::log1p(v);
    case F64_SIN: return std::sin(v);
    case F64_COS: return std::cos(v);
    case F64_TAN: return std::tan(v);
    case F64_SINH: return std::sinh(v);
    case F64_COSH: return std::cosh(v);
    case F64_ASIN: return std::asin(v);
    case F64_ACOS: return std::acos(v);
    case F64_ATAN: return std::atan(v);
    case F64_ASINH: return std::asinh(v);
    case F64_ACOSH: return std::acosh(v);
    case F64_ATANH: return std::atanh(v);
    case F64_ERF: return std::erf(v);
    case F64_ERFC: return std::erfc(v);
    case F64_ERFINV: return erfinv64(v);
    case F64_SIGMOID: return 1.0 / (1.0 + std::exp(-v));
    default: return std::cbrt(v);
  }
}

class F64Unary : public mx::UnaryPrimitive {
 public:
  F64Unary(mx::Stream s, int fn) : mx::UnaryPrimitive(s), fn_(fn) {}

  void eval_cpu(const std::vector<mx::array> &inputs, mx::array &out) override {
    const mx::array &in = inputs[0];
    out.set_data(mx::allocator::malloc(std::max<size_t>(out.nbytes(), 1)));
    auto &enc = mx::cpu::get_command_encoder(stream());
    enc.set_input_array(in);
    enc.set_output_array(out);
    enc.dispatch([in = in, out = out, fn = fn_]() mutable {
      const double *src = in.data<double>();
      double *dst = out.data<double>();
      size_t n = in.size();
      for (size_t i = 0; i < n; i++) dst[i] = f64_apply(fn, src[i]);
    });
  }

  void eval_gpu(const std::vector<mx::array> &, mx::array &) override {
    throw std::runtime_error("float64 is only available on the CPU");
  }

  const char *name() const override { return "EMLXFloat64Unary"; }

  bool is_equivalent(const mx::Primitive &other) const override {
    auto *o = dynamic_cast<const F64Unary *>(&other);
    return o && o->fn_ == fn_;
  }

 private:
  int fn_;
};

mx::array f64_unary(const mx::array &x, int fn, SD s) {
  auto st = mx::to_stream(s);
  auto xc = mx::contiguous(x, false, st);
  return mx::array(x.shape(), mx::float64, std::make_shared<F64Unary>(st, fn), {xc});
}

#define F64_OR_MLX(name, code, mlx_expr)                     \
  mx::array emlx_##name(const mx::array &x, SD s) {          \
    if (x.dtype() == mx::float64) return f64_unary(x, code, s); \
    return mlx_expr;                                        \
  }

F64_OR_MLX(exp, F64_EXP, mx::exp(x, s))
F64_OR_MLX(expm1, F64_EXPM1,
           x.dtype() == mx::complex64 ? mx::subtract(mx::exp(x, s), mx::array(std::complex<float>(1.0f, 0.0f)), s)
                                      : mx::expm1(x, s))
F64_OR_MLX(log1p, F64_LOG1P, mx::log1p(x, s))
F64_OR_MLX(sin, F64_SIN, mx::sin(x, s))
F64_OR_MLX(cos, F64_COS, mx::cos(x, s))
F64_OR_MLX(tan, F64_TAN, mx::tan(x, s))
F64_OR_MLX(sinh, F64_SINH, mx::sinh(x, s))
F64_OR_MLX(cosh, F64_COSH, mx::cosh(x, s))
F64_OR_MLX(asin, F64_ASIN, mx::arcsin(x, s))
F64_OR_MLX(acos, F64_ACOS, mx::arccos(x, s))
F64_OR_MLX(atan, F64_ATAN, mx::arctan(x, s))
F64_OR_MLX(asinh, F64_ASINH, mx::arcsinh(x, s))
F64_OR_MLX(acosh, F64_ACOSH, mx::arccosh(x, s))
F64_OR_MLX(atanh, F64_ATANH, mx::arctanh(x, s))
F64_OR_MLX(erf, F64_ERF, mx::erf(x, s))
F64_OR_MLX(erf_inv, F64_ERFINV, mx::erfinv(x, s))
F64_OR_MLX(sigmoid, F64_SIGMOID,
           x.dtype() == mx::complex64
               ? mx::reciprocal(mx::add(mx::exp(mx::negative(x, s), s), mx::array(std::complex<float>(1.0f, 0.0f)), s), s)
               : mx::sigmoid(x, s))

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
  if (x.dtype() == mx::float64) return f64_unary(x, F64_CBRT, s);
  // complex: the principal root exp(log(z) / 3)
  if (x.dtype() == mx::complex64) return mx::exp(mx::divide(mx::log(x, s), mx::array(std::complex<float>(3.0f, 0.0f)), s), s);
  auto third = mx::array(1.0 / 3.0, x.dtype());
  return mx::multiply(mx::sign(x, s), mx::power(mx::abs(x, s), third, s), s);
}

mx::array emlx_erfc(const mx::array &x, SD s) {
  if (x.dtype() == mx::float64) return f64_unary(x, F64_ERFC, s);
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
  if (axis >= static_cast<int64_t>(shape.size())) throw arg_error("iota axis out of range");
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

mx::array emlx_pad_impl(const mx::array &x0, const mx::array &value, const std::vector<int64_t> &lo,
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
void check_slice_lists(const mx::array &x, size_t starts, const mx::Shape &lengths, const mx::Shape &strides) {
  size_t nd = x.ndim();
  if (starts != nd || lengths.size() != nd || strides.size() != nd)
    throw arg_error("slice expects one start, length and stride per dimension");
  for (size_t i = 0; i < nd; i++) {
    if (strides[i] < 1) throw arg_error("slice strides must be positive");
    if (lengths[i] < 0 || lengths[i] > x.shape(static_cast<int>(i)))
      throw arg_error("slice lengths must be between 0 and the dimension's size");
  }
}

mx::array emlx_slice(const mx::array &x, const mx::Shape &start, const mx::Shape &lengths, const mx::Shape &strides,
                     SD s) {
  check_slice_lists(x, start.size(), lengths, strides);
  for (size_t i = 0; i < start.size(); i++)
    if (start[i] < 0 || start[i] + lengths[i] > x.shape(static_cast<int>(i)))
      throw arg_error("slice start out of range");
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
  check_slice_lists(x, starts.size(), lengths, strides);
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
  if (upd.ndim() != x.ndim()) throw arg_error("put_slice expects an update of the tensor's rank");
  for (size_t i = 0; i < x.ndim(); i++)
    if (upd.shape(static_cast<int>(i)) > x.shape(static_cast<int>(i)))
      throw arg_error("put_slice update is larger than the tensor");
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
  if (dim == 0) throw arg_error("cannot index into an axis of size 0");
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

// MLX's cummax/cummin lose NaN for half types: run them in float32.
mx::array emlx_cumext(const mx::array &x, int axis, bool reverse, bool is_max, SD s) {
  bool half = x.dtype() == mx::float16 || x.dtype() == mx::bfloat16;
  auto y = half ? mx::astype(x, mx::float32, s) : x;
  auto r = is_max ? mx::cummax(y, axis, reverse, true, s) : mx::cummin(y, axis, reverse, true, s);
  return half ? mx::astype(r, x.dtype(), s) : r;
}

// ---- convolution ----

mx::array window_view(const mx::array &x, const mx::array &value, const mx::Shape &window,
                      const std::vector<int64_t> &strides, const std::vector<int64_t> &lo,
                      const std::vector<int64_t> &hi, const std::vector<int64_t> &dil, SD s);

// Convolution as patches times kernel (one batched matmul per feature
// group), in Nx's layout. MLX has no float64 convolution kernel; float64
// matmul exists on the CPU, so float64 (and integer) convolutions run here.
mx::array conv_patches(const mx::array &x, const mx::array &k, const std::vector<int> &strides,
                       const std::vector<int> &lo, const std::vector<int> &hi, const std::vector<int> &in_dil,
                       const std::vector<int> &k_dil, int groups, SD s) {
  int nd = static_cast<int>(x.ndim()), sp = nd - 2;
  std::vector<int64_t> plo(nd, 0), phi(nd, 0), pin(nd, 0);
  for (int i = 0; i < sp; i++) {
    plo[i + 2] = lo[i];
    phi[i + 2] = hi[i];
    pin[i + 2] = in_dil[i] - 1;
  }
  auto p = emlx_pad_impl(x, mx::zeros({}, x.dtype(), s), plo, phi, pin, s);
  mx::Shape window{1, 1};
  std::vector<int64_t> st{1, 1}, dl{1, 1}, zero(nd, 0);
  for (int i = 0; i < sp; i++) {
    window.push_back(k.shape(i + 2));
    st.push_back(strides[i]);
    dl.push_back(k_dil[i]);
  }
  auto v = window_view(p, mx::zeros({}, x.dtype(), s), window, st, zero, zero, dl, s);
  int n = x.shape(0), c = x.shape(1), o = k.shape(0), cg = c / groups, og = o / groups;
  int64_t positions = 1, ksize = 1;
  mx::Shape out_sp;
  for (int i = 0; i < sp; i++) {
    out_sp.push_back(v.shape(2 + i));
    positions *= v.shape(2 + i);
    ksize *= k.shape(i + 2);
  }
  int P = static_cast<int>(positions), K = static_cast<int>(ksize);
  auto patches = mx::reshape(v, {n, groups, cg, P, K}, s);
  patches = mx::reshape(mx::transpose(patches, {1, 0, 3, 2, 4}, s), {groups, n * P, cg * K}, s);
  auto kern = mx::transpose(mx::reshape(k, {groups, og, cg * K}, s), {0, 2, 1}, s);
  auto r = mx::matmul(patches, kern, s);  // groups, n*P, og
  r = mx::transpose(mx::reshape(r, {groups, n, P, og}, s), {1, 0, 3, 2}, s);
  mx::Shape shape{n, o};
  shape.insert(shape.end(), out_sp.begin(), out_sp.end());
  return mx::reshape(r, shape, s);
}

std::vector<int> inverse_perm(const std::vector<int> &p) {
  std::vector<int> inv(p.size());
  for (size_t i = 0; i < p.size(); i++) inv[p[i]] = static_cast<int>(i);
  return inv;
}

// One real convolution in Nx's layout ({N, C, spatial...} input, {O, I,
// spatial...} kernel) through MLX's channels-last conv_general.
mx::array conv_nchw(const mx::array &x, const mx::array &k, const std::vector<int> &strides,
                    const std::vector<int> &lo, const std::vector<int> &hi, const std::vector<int> &in_dil,
                    const std::vector<int> &k_dil, int groups, SD s) {
  int nd = static_cast<int>(x.ndim());
  std::vector<int> to_last{0}, to_first{0, nd - 1};
  for (int i = 2; i < nd; i++) to_last.push_back(i);
  to_last.push_back(1);
  for (int i = 1; i < nd - 1; i++) to_first.push_back(i);
  // Negative padding crops the (dilated) input: pad what is positive, slice the rest.
  std::vector<int> plo, phi;
  bool crop = false;
  for (size_t i = 0; i < lo.size(); i++) {
    plo.push_back(std::max(lo[i], 0));
    phi.push_back(std::max(hi[i], 0));
    crop |= lo[i] < 0 || hi[i] < 0;
  }
  auto xin = mx::transpose(x, to_last, s);
  if (crop) {
    // Dilate and pad explicitly, crop, then convolve without padding.
    std::vector<int64_t> l(nd, 0), h(nd, 0), in(nd, 0);
    for (size_t i = 0; i < lo.size(); i++) {
      l[i + 1] = lo[i];
      h[i + 1] = hi[i];
      in[i + 1] = in_dil[i] - 1;
    }
    xin = emlx_pad_impl(xin, mx::array(0, xin.dtype()), l, h, in, s);
    std::vector<int> zeros(lo.size(), 0), ones(lo.size(), 1);
    auto r = mx::conv_general(xin, mx::transpose(k, to_last, s), strides, zeros, zeros, k_dil, ones, groups, false, s);
    return mx::transpose(r, to_first, s);
  }
  auto r = mx::conv_general(xin, mx::transpose(k, to_last, s), strides, plo, phi, k_dil, in_dil, groups, false, s);
  return mx::transpose(r, to_first, s);
}

mx::array conv_typed(const mx::array &x, const mx::array &k, const std::vector<int> &strides,
                     const std::vector<int> &lo, const std::vector<int> &hi, const std::vector<int> &in_dil,
                     const std::vector<int> &k_dil, int groups, SD s) {
  if (is_complex(x.dtype())) {
    // (a + bi) * (c + di) = (ac - bd) + (ad + bc)i, four real convolutions
    auto a = mx::real(x, s), b = mx::imag(x, s), c = mx::real(k, s), d = mx::imag(k, s);
    auto f = [&](const mx::array &u, const mx::array &v) { return conv_nchw(u, v, strides, lo, hi, in_dil, k_dil, groups, s); };
    auto re = mx::subtract(f(a, c), f(b, d), s);
    auto im = mx::add(f(a, d), f(b, c), s);
    return mx::add(mx::astype(re, mx::complex64, s),
                   mx::multiply(mx::astype(im, mx::complex64, s), mx::array(std::complex<float>(0.0f, 1.0f)), s), s);
  }
  if (x.dtype() == mx::float64) return conv_patches(x, k, strides, lo, hi, in_dil, k_dil, groups, s);
  return conv_nchw(x, k, strides, lo, hi, in_dil, k_dil, groups, s);
}

mx::array emlx_conv(const mx::array &x0, const mx::array &k0, const std::vector<int> &strides,
                    const std::vector<int> &lo, const std::vector<int> &hi, const std::vector<int> &in_dil,
                    const std::vector<int> &k_dil, int fgroups, int bgroups, const std::vector<int> &in_perm,
                    const std::vector<int> &k_perm, const std::vector<int> &out_perm, std::optional<mx::Dtype> out,
                    SD s) {
  mx::Dtype t = out ? *out : mx::promote_types(x0.dtype(), k0.dtype());
  // MLX convolves floats: integers go through float64 on the CPU (exact to
  // 2^53), float32 elsewhere.
  mx::Dtype ct = t;
  if (!is_float(t) && !is_complex(t)) ct = mx::to_stream(s).device == mx::Device::cpu ? mx::float64 : mx::float32;
  auto x = mx::transpose(mx::astype(x0, ct, s), in_perm, s);
  auto k = mx::transpose(mx::astype(k0, ct, s), k_perm, s);
  mx::array r = x;
  if (bgroups > 1) {
    // Batch groups: the g-th slice of the batch meets the g-th slice of the
    // output features; results are joined along the features.
    int n = x.shape(0) / bgroups, o = k.shape(0) / bgroups;
    std::vector<mx::array> parts;
    for (int g = 0; g < bgroups; g++) {
      mx::Shape xs(x.ndim(), 0), xe = x.shape(), ks(k.ndim(), 0), ke = k.shape();
      xs[0] = g * n;
      xe[0] = (g + 1) * n;
      ks[0] = g * o;
      ke[0] = (g + 1) * o;
      parts.push_back(conv_typed(mx::slice(x, xs, xe, s), mx::slice(k, ks, ke, s), strides, lo, hi, in_dil, k_dil,
                                 fgroups, s));
    }
    r = mx::concatenate(parts, 1, s);
  } else {
    r = conv_typed(x, k, strides, lo, hi, in_dil, k_dil, fgroups, s);
  }
  // Nx gives the output permutation as the layout of the result.
  r = mx::transpose(r, inverse_perm(out_perm), s);
  if (!is_float(t) && !is_complex(t)) r = mx::round(r, 0, s);
  return mx::astype(r, t, s);
}

// ---- windows ----

// A view of every window: shape out_dims ++ window_dims, after padding x
// with `value` (lo/hi per axis).
mx::array window_view(const mx::array &x, const mx::array &value, const mx::Shape &window,
                      const std::vector<int64_t> &strides, const std::vector<int64_t> &lo,
                      const std::vector<int64_t> &hi, const std::vector<int64_t> &dil, SD s) {
  for (size_t i = 0; i < window.size(); i++) {
    if (window[i] < 1) throw arg_error("window dimensions must be positive");
    if (i < strides.size() && strides[i] < 1) throw arg_error("window strides must be positive");
    if (i < dil.size() && dil[i] < 1) throw arg_error("window dilations must be positive");
  }
  int nd = static_cast<int>(x.ndim());
  if (static_cast<int>(window.size()) != nd || static_cast<int>(strides.size()) != nd ||
      static_cast<int>(lo.size()) != nd || static_cast<int>(hi.size()) != nd || static_cast<int>(dil.size()) != nd)
    throw arg_error("window options must have one entry per dimension");
  std::vector<int64_t> zero(nd, 0);
  auto p = mx::contiguous(emlx_pad_impl(x, value, lo, hi, zero, s), false, s);
  mx::Shape shape;
  mx::Strides st;
  int64_t stride = 1;
  std::vector<int64_t> rowmajor(nd);
  for (int i = nd - 1; i >= 0; i--) {
    rowmajor[i] = stride;
    stride *= p.shape(i);
  }
  for (int i = 0; i < nd; i++) {
    int64_t span = (window[i] - 1) * dil[i] + 1;
    int64_t o = p.shape(i) >= span ? (p.shape(i) - span) / strides[i] + 1 : 0;
    shape.push_back(static_cast<int32_t>(o));
    st.push_back(rowmajor[i] * strides[i]);
  }
  for (int i = 0; i < nd; i++) {
    shape.push_back(window[i]);
    st.push_back(rowmajor[i] * dil[i]);
  }
  return mx::as_strided(p, shape, st, 0, s);
}

mx::array identity_value(int kind, mx::Dtype d) {
  switch (kind) {
    case 0: return mx::array(0, d);
    case 1: return mx::array(1, d);
    default: {
      bool is_max = kind == 2;
      if (is_float(d)) return mx::array(is_max ? -INFINITY : INFINITY, d);
      if (is_signed_int(d)) {
        int64_t hi = d.size() == 8 ? INT64_MAX : (int64_t(1) << (d.size() * 8 - 1)) - 1;
        int64_t lo = d.size() == 8 ? INT64_MIN : -(int64_t(1) << (d.size() * 8 - 1));
        return mx::array(is_max ? lo : hi, d);
      }
      uint64_t hi = d.size() == 8 ? UINT64_MAX : (uint64_t(1) << (d.size() * 8)) - 1;
      return is_max ? mx::array(0, d) : mx::array(hi, d);
    }
  }
}

// window_sum (0), window_product (1), window_max (2), window_min (3)
mx::array emlx_window_reduce(const mx::array &x, int64_t kind, const mx::Shape &window,
                             const std::vector<int64_t> &strides, const std::vector<int64_t> &lo,
                             const std::vector<int64_t> &hi, const std::vector<int64_t> &dil, SD s) {
  auto v = window_view(x, identity_value(static_cast<int>(kind), x.dtype()), window, strides, lo, hi, dil, s);
  int nd = static_cast<int>(x.ndim());
  std::vector<int> axes;
  for (int i = 0; i < nd; i++) axes.push_back(nd + i);
  switch (kind) {
    case 0: return mx::sum(v, axes, false, s);
    case 1: return mx::prod(v, axes, false, s);
    case 2: return mx::max(v, axes, false, s);
    default: return mx::min(v, axes, false, s);
  }
}

// All windows flattened: out_dims ++ [window size], for reductions with an
// arbitrary function (done by the caller).
mx::array emlx_windows(const mx::array &x, const mx::array &value, const mx::Shape &window,
                       const std::vector<int64_t> &strides, const std::vector<int64_t> &lo,
                       const std::vector<int64_t> &hi, const std::vector<int64_t> &dil, SD s) {
  auto v = window_view(x, mx::astype(value, x.dtype(), s), window, strides, lo, hi, dil, s);
  mx::Shape shape(v.shape().begin(), v.shape().begin() + x.ndim());
  shape.push_back(-1);
  return mx::reshape(v, shape, s);
}

// window_scatter_max/min: each window picks its last max (min) element and
// the source value for the window is added there; init elsewhere.
mx::array emlx_window_scatter(const mx::array &x, const mx::array &source, const mx::array &init, bool is_max,
                              const mx::Shape &window, const std::vector<int64_t> &strides,
                              const std::vector<int64_t> &lo, const std::vector<int64_t> &hi, SD s) {
  int nd = static_cast<int>(x.ndim());
  std::vector<int64_t> one(nd, 1), zero(nd, 0);
  auto initv = mx::astype(init, x.dtype(), s);
  auto vals = emlx_windows(x, initv, window, strides, lo, hi, one, s);
  // flat indices into the padded tensor, windowed the same way
  mx::Shape pshape;
  for (int i = 0; i < nd; i++) pshape.push_back(static_cast<int32_t>(x.shape(i) + lo[i] + hi[i]));
  size_t psize = 1;
  for (auto d : pshape) psize *= static_cast<size_t>(d);
  auto ids = mx::reshape(mx::arange(0.0, static_cast<double>(psize), 1.0, mx::int64, s), pshape, s);
  auto idw = emlx_windows(ids, mx::array(int64_t(0)), window, strides, zero, zero, one, s);
  int w = vals.shape(-1);
  auto flipped = mx::flip(vals, -1, s);
  auto pos = is_max ? mx::argmax(flipped, -1, true, s) : mx::argmin(flipped, -1, true, s);
  pos = mx::subtract(mx::array(w - 1, pos.dtype()), pos, s);
  auto target = mx::reshape(mx::take_along_axis(idw, mx::astype(pos, mx::int32, s), -1, s), {-1}, s);
  auto src = mx::reshape(mx::astype(source, x.dtype(), s), {-1, 1}, s);
  auto acc = mx::scatter_add(mx::zeros({static_cast<int32_t>(psize)}, x.dtype(), s), {target}, src, {0}, s);
  acc = mx::reshape(acc, pshape, s);
  mx::Shape start, stop;
  for (int i = 0; i < nd; i++) {
    start.push_back(static_cast<int32_t>(lo[i]));
    stop.push_back(static_cast<int32_t>(lo[i] + x.shape(i)));
  }
  return mx::add(mx::slice(acc, start, stop, s), initv, s);
}

// ---- FFT ----

mx::array emlx_fft(const mx::array &x, int64_t n, int64_t axis, bool inverse, double eps, SD s) {
  auto c = is_complex(x.dtype()) ? x : mx::astype(x, mx::complex64, s);
  auto norm = mx::fft::FFTNorm::Backward;
  auto r = inverse ? mx::fft::ifft(c, static_cast<int>(n), static_cast<int>(axis), norm, s)
                   : mx::fft::fft(c, static_cast<int>(n), static_cast<int>(axis), norm, s);
  if (eps > 0) {
    auto e = mx::array(static_cast<float>(eps));
    auto re = mx::real(r, s);
    auto im = mx::imag(r, s);
    re = mx::where(mx::less_equal(mx::abs(re, s), e, s), mx::zeros_like(re, s), re, s);
    im = mx::where(mx::less_equal(mx::abs(im, s), e, s), mx::zeros_like(im, s), im, s);
    r = mx::add(mx::astype(re, mx::complex64, s),
                mx::multiply(mx::astype(im, mx::complex64, s), mx::array(std::complex<float>(0.0f, 1.0f)), s), s);
  }
  return r;
}

// ---- linear algebra (MLX runs these on the CPU) ----

// Decompositions run in the output's float type (f32 for half types and
// integers, f64 stays f64).
void check_matrix(const mx::array &x) {
  if (x.ndim() < 2) throw arg_error("linear algebra expects a matrix (at least two dimensions)");
  for (size_t i = 0; i < x.ndim(); i++)
    if (x.shape(static_cast<int>(i)) == 0) throw arg_error("linear algebra expects a non-empty matrix");
}

mx::array cast_for_linalg(const mx::array &x, std::optional<mx::Dtype> out, SD s) {
  mx::Dtype t = out ? *out : (is_float(x.dtype()) ? x.dtype() : mx::float32);
  if (t != mx::float64) t = mx::float32;
  return mx::astype(x, t, s);
}

mx::array float_for_linalg(const mx::array &x, std::optional<mx::Dtype> out, SD s) {
  check_matrix(x);
  return cast_for_linalg(x, out, s);
}

// Triangular solves are cheap: on the CPU they run in float64 and round once,
// which gives the correctly rounded float32 answer Nx's reference gives.
mx::array precise_for_linalg(const mx::array &x, std::optional<mx::Dtype> out, SD s) {
  if (x.ndim() >= 1)
    for (size_t i = 0; i < x.ndim(); i++)
      if (x.shape(static_cast<int>(i)) == 0) throw arg_error("linear algebra expects non-empty operands");
  if (mx::to_stream(s).device == mx::Device::cpu) return mx::astype(x, mx::float64, s);
  return float_for_linalg(x, out, s);
}

// Complex systems through the real embedding [[Ar, -Ai], [Ai, Ar]].
mx::array complex_solve(const mx::array &a, const mx::array &b, SD s) {
  check_matrix(a);
  auto ar = mx::astype(mx::real(a, s), mx::float64, s), ai = mx::astype(mx::imag(a, s), mx::float64, s);
  bool vec = b.ndim() == a.ndim() - 1;
  auto bb = vec ? mx::expand_dims(b, -1, s) : b;
  auto br = mx::astype(mx::real(bb, s), mx::float64, s), bi = mx::astype(mx::imag(bb, s), mx::float64, s);
  auto top = mx::concatenate({ar, mx::negative(ai, s)}, -1, s);
  auto bottom = mx::concatenate({ai, ar}, -1, s);
  auto m = mx::concatenate({top, bottom}, -2, s);
  auto rhs = mx::concatenate({br, bi}, -2, s);
  auto x = mx::linalg::solve(m, rhs, s);
  int n = a.shape(-1);
  auto xs = x.shape();
  mx::Shape start(x.ndim(), 0), mid = xs;
  mid[mid.size() - 2] = n;
  mx::Shape start2(x.ndim(), 0);
  start2[start2.size() - 2] = n;
  auto xr = mx::slice(x, start, mid, s), xi = mx::slice(x, start2, xs, s);
  auto r = mx::add(mx::astype(xr, mx::complex64, s),
                   mx::multiply(mx::astype(xi, mx::complex64, s), mx::array(std::complex<float>(0.0f, 1.0f)), s), s);
  return vec ? mx::squeeze(r, -1, s) : r;
}

mx::array emlx_triangular_solve(const mx::array &a0, const mx::array &b0, bool left, bool lower, bool transpose,
                                std::optional<mx::Dtype> out, SD s) {
  check_matrix(a0);
  if (b0.ndim() < 1 || b0.size() == 0) throw arg_error("linear algebra expects non-empty operands");
  // Nx raises on a singular (zero-diagonal) matrix: check it now.
  auto diag = mx::diagonal(a0, 0, -2, -1, s);
  if (mx::any(mx::equal(diag, mx::zeros_like(diag, s), s), s).item<bool>())
    throw arg_error("can't solve for singular matrix");
  if (is_complex(a0.dtype()) || is_complex(b0.dtype())) {
    auto a = mx::astype(a0, mx::complex64, s), b = mx::astype(b0, mx::complex64, s);
    if (transpose) a = mx::swapaxes(a, -1, -2, s);
    if (left) return complex_solve(a, b, s);
    bool vec = b.ndim() == a.ndim() - 1;
    auto bt = vec ? b : mx::swapaxes(b, -1, -2, s);
    auto xt = complex_solve(mx::swapaxes(a, -1, -2, s), bt, s);
    return vec ? xt : mx::swapaxes(xt, -1, -2, s);
  }
  auto a = precise_for_linalg(a0, out, s), b = precise_for_linalg(b0, out, s);
  if (transpose) {
    a = mx::swapaxes(a, -1, -2, s);
    lower = !lower;
  }
  bool vec = b.ndim() == a.ndim() - 1;
  if (vec) b = mx::expand_dims(b, -1, s);
  mx::array x = a;
  if (left) {
    x = mx::linalg::solve_triangular(a, b, !lower, s);
  } else {
    // x a = b  <=>  a^T x^T = b^T
    auto xt = mx::linalg::solve_triangular(mx::swapaxes(a, -1, -2, s), mx::swapaxes(b, -1, -2, s), lower, s);
    x = mx::swapaxes(xt, -1, -2, s);
  }
  if (vec) x = mx::squeeze(x, -1, s);
  return x;
}

// -0.0 becomes +0.0, as Nx's own decompositions produce.
mx::array plus_zero(const mx::array &x, SD s) { return mx::add(x, mx::array(0.0, x.dtype()), s); }

std::vector<mx::array> emlx_qr(const mx::array &a0, bool complete, std::optional<mx::Dtype> out, SD s) {
  auto a = float_for_linalg(a0, out, s);
  int m = a.shape(-2), n = a.shape(-1);
  if (complete && m > n) {
    // Complete Q from the QR of [A | I]: its first m columns span R^m.
    mx::Shape eshape(a.shape().begin(), a.shape().end() - 2);
    eshape.push_back(m);
    eshape.push_back(m);
    auto aug = mx::concatenate({a, mx::broadcast_to(mx::eye(m, a.dtype(), s), eshape, s)}, -1, s);
    auto [q, r] = mx::linalg::qr(aug, s);
    auto rr = mx::slice(r, mx::Shape(r.ndim(), 0), [&] {
      auto e = r.shape();
      e[e.size() - 1] = n;
      return e;
    }(), s);
    return {plus_zero(q, s), plus_zero(rr, s)};
  }
  auto [q, r] = mx::linalg::qr(a, s);
  return {plus_zero(q, s), plus_zero(r, s)};
}

std::vector<mx::array> emlx_svd(const mx::array &a0, bool full, std::optional<mx::Dtype> out, SD s) {
  auto a = float_for_linalg(a0, out, s);
  auto r = mx::linalg::svd(a, true, s);
  if (!full) {
    int m = a.shape(-2), n = a.shape(-1), k = std::min(m, n);
    auto u = r[0], vt = r[2];
    auto ue = u.shape();
    ue[ue.size() - 1] = k;
    auto ve = vt.shape();
    ve[ve.size() - 2] = k;
    r[0] = mx::slice(u, mx::Shape(u.ndim(), 0), ue, s);
    r[2] = mx::slice(vt, mx::Shape(vt.ndim(), 0), ve, s);
  }
  return {plus_zero(r[0], s), plus_zero(r[1], s), plus_zero(r[2], s)};
}

std::vector<mx::array> emlx_eigh(const mx::array &a0, std::optional<mx::Dtype> out, SD s) {
  auto a = float_for_linalg(a0, out, s);
  auto [w, v] = mx::linalg::eigh(a, "L", s);
  // Nx orders eigenvalues from the largest down
  return {plus_zero(mx::flip(w, -1, s), s), plus_zero(mx::flip(v, -1, s), s)};
}

std::vector<mx::array> emlx_lu(const mx::array &a0, std::optional<mx::Dtype> out, SD s) {
  auto a = float_for_linalg(a0, out, s);
  auto r = mx::linalg::lu(a, s);  // {pivots as a permutation vector, L, U}
  // Nx returns P as a matrix with A = P.L.U
  int n = a.shape(-2);
  auto p = mx::astype(r[0], mx::int32, s);
  auto ar = mx::arange(n, s);
  // pm[i][j] = (p[i] == j), so that A = pm . L . U
  auto pm = mx::astype(mx::equal(mx::expand_dims(p, -1, s), ar, s), a.dtype(), s);
  return {pm, plus_zero(r[1], s), plus_zero(r[2], s)};
}

mx::array emlx_cholesky(const mx::array &a0, std::optional<mx::Dtype> out, SD s) {
  return mx::linalg::cholesky(float_for_linalg(a0, out, s), false, s);
}

mx::array emlx_solve(const mx::array &a0, const mx::array &b0, std::optional<mx::Dtype> out, SD s) {
  auto a = float_for_linalg(a0, out, s), b = cast_for_linalg(b0, out, s);
  if (b.size() == 0) throw arg_error("linear algebra expects non-empty operands");
  bool vec = b.ndim() == a.ndim() - 1;
  auto x = mx::linalg::solve(a, vec ? mx::expand_dims(b, -1, s) : b, s);
  return vec ? mx::squeeze(x, -1, s) : x;
}

mx::array emlx_determinant(const mx::array &a0, std::optional<mx::Dtype> out, SD s) {
  return mx::linalg::det(float_for_linalg(a0, out, s), s);
}

// ---- the op table ----

enum {
#define OP_ENTRY(n, sig, k) OP_##n,
#include "emlx_ops.def"
  OP_COUNT
};

struct op_info {
  const char *name;
  const char *sig;
  int outputs;
};

const op_info op_table[] = {
#define OP_ENTRY(n, sig, k) {#n, sig, k},
#include "emlx_ops.def"
};

// Results EMLX can describe (rank) and that can exist in this machine's
// memory: MLX's CPU allocator does not report failure, it crashes.
size_t memory_bytes() {
  static size_t total = [] {
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && size > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(size) : SIZE_MAX;
  }();
  return total;
}

void check_results(const std::vector<mx::array> &results) {
  for (auto &r : results) {
    if (r.ndim() > EMLX_MAX_DIMS) throw arg_error("EMLX supports tensors of up to 32 dimensions");
    double bytes = static_cast<double>(r.itemsize());
    for (auto d : r.shape()) bytes *= static_cast<double>(d);
    if (bytes > static_cast<double>(memory_bytes()))
      throw arg_error("the result would need " + std::to_string(bytes / 1e9) + " GB, more than this machine's memory");
  }
}

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
#define OPN(n, sig, k, e) \
  case OP_##n:            \
    return e;
#include "emlx_ops.def"
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
#undef S
#undef OUT
}

// One op-table instruction, for a single op and for a program's replay
// alike: the out type, the op, the checks on its results, and the cast of
// every result whose type differs from the out type.
std::vector<mx::array> run_instr(int op, const mx::Stream &stream, const emlx_arg *args, int out_dtype) {
  std::optional<mx::Dtype> out;
  if (out_dtype >= 0) out = to_dtype(out_dtype);
  auto results = run_op(op, stream, args, out);
  check_results(results);
  if (out)
    for (auto &r : results)
      if (r.dtype() != *out) r = emlx_as_type(r, *out, stream);
  return results;
}

// Hands the results out as new handles; on failure none is left behind.
void hand_out(std::vector<mx::array> &results, emlx_arr **outs) {
  size_t made = 0;
  try {
    for (; made < results.size(); made++) outs[made] = new emlx_arr(std::move(results[made]));
  } catch (...) {
    while (made > 0) delete outs[--made];
    throw;
  }
}

}  // namespace

extern "C" {

int emlx_op_count(void) { return OP_COUNT; }
const char *emlx_op_name(int op) { return op >= 0 && op < OP_COUNT ? op_table[op].name : nullptr; }
const char *emlx_op_signature(int op) { return op >= 0 && op < OP_COUNT ? op_table[op].sig : nullptr; }
int emlx_op_outputs(int op) { return op >= 0 && op < OP_COUNT ? op_table[op].outputs : 0; }

const char *emlx_last_error(void) { return last_error.c_str(); }

emlx_status emlx_op_run(int op, emlx_stream *s, const emlx_arg *args, int nargs, int out_dtype, emlx_arr **outs,
                        int *nouts) {
  *nouts = 0;
  return guard([&] {
    if (op < 0 || op >= OP_COUNT) throw arg_error("unknown op");
    if (static_cast<int>(std::strlen(op_table[op].sig)) != nargs) throw arg_error("wrong number of op arguments");
    auto results = run_instr(op, s->s, args, out_dtype);
    if (results.size() > EMLX_MAX_OUTS) throw arg_error("too many op results");
    hand_out(results, outs);
    *nouts = static_cast<int>(results.size());
  });
}

}  // extern "C"

struct emlx_compiled {
  std::function<std::vector<mx::array>(const std::vector<mx::array> &)> fn;
};

namespace {

std::vector<mx::array> replay(const mx::Stream &stream, const emlx_instr *instrs, int ninstrs,
                              const std::vector<mx::array> &inputs, const std::vector<int> &out_slots) {
  std::vector<emlx_arr> slots;
  slots.reserve(inputs.size() + static_cast<size_t>(ninstrs) * 2);
  for (auto &a : inputs) slots.emplace_back(a);
  std::vector<emlx_arr *> lists;
  for (int i = 0; i < ninstrs; i++) {
    const emlx_instr &in = instrs[i];
    emlx_arg args[EMLX_MAX_ARGS];
    std::vector<std::vector<emlx_arr *>> arr_lists;
    for (int k = 0; k < in.nargs; k++) {
      args[k] = in.args[k];
      if (in.args[k].kind == EMLX_ARG_ARR) {
        int64_t slot = in.args[k].u.i;
        if (slot < 0 || slot >= static_cast<int64_t>(slots.size())) throw arg_error("program slot out of range");
        args[k].u.arr = &slots[slot];
      } else if (in.args[k].kind == EMLX_ARG_ARRS) {
        std::vector<emlx_arr *> v;
        for (int j = 0; j < in.args[k].u.ints.n; j++) {
          int64_t slot = in.args[k].u.ints.v[j];
          if (slot < 0 || slot >= static_cast<int64_t>(slots.size())) throw arg_error("program slot out of range");
          v.push_back(&slots[slot]);
        }
        arr_lists.push_back(std::move(v));
        args[k].u.arrs.v = arr_lists.back().data();
        args[k].u.arrs.n = static_cast<int>(arr_lists.back().size());
      }
    }
    for (auto &r : run_instr(in.op, stream, args, in.out_dtype)) slots.emplace_back(std::move(r));
  }
  std::vector<mx::array> outs;
  for (int slot : out_slots) {
    if (slot < 0 || slot >= static_cast<int>(slots.size())) throw arg_error("program output slot out of range");
    outs.push_back(slots[slot].a);
  }
  return outs;
}

}  // namespace

extern "C" {

emlx_status emlx_program_run(emlx_stream *s, const emlx_instr *instrs, int ninstrs, emlx_arr **inputs, int ninputs,
                             const int *out_slots, int nouts, int compile, emlx_compiled **cache, emlx_arr **outs) {
  return guard([&] {
    std::vector<mx::array> in;
    for (int i = 0; i < ninputs; i++) in.push_back(inputs[i]->a);
    std::vector<int> slots(out_slots, out_slots + nouts);
    std::vector<mx::array> results;
    if (compile) {
      if (!*cache) {
        mx::Stream st = s->s;
        auto body = [st, instrs, ninstrs, slots](const std::vector<mx::array> &args) {
          return replay(st, instrs, ninstrs, args, slots);
        };
        *cache = new emlx_compiled{mx::compile(body)};
      }
      results = (*cache)->fn(in);
    } else {
      results = replay(s->s, instrs, ninstrs, in, slots);
    }
    hand_out(results, outs);
  });
}

void emlx_compiled_free(emlx_compiled *c) {
  try {
    delete c;
  } catch (...) {
  }
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
  for (size_t i = 0; i < a->a.ndim() && i < EMLX_MAX_DIMS; i++) dims[i] = a->a.shape(static_cast<int>(i));
}

void emlx_arr_strides(const emlx_arr *a, int64_t *strides) {
  for (size_t i = 0; i < a->a.ndim() && i < EMLX_MAX_DIMS; i++) strides[i] = a->a.strides()[i];
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

const char *emlx_mlx_version(void) { return mx::version(); }

}  // extern "C"
