// Float64 math on the CPU: an MLX primitive of ours (F64Unary) and the
// unary kernels that use it for float64 inputs, and for float32 inputs on
// the CPU, and MLX's own ops otherwise.

#include "emlx_kernels.hpp"

#include <mlx/backend/cpu/encoder.h>
#include <mlx/primitives.h>

#include <algorithm>
#include <cfloat>
#include <limits>
#include <memory>

namespace emlx {

// ---- float64 math on the CPU ----
//
// MLX's CPU kernels for several transcendental functions use float32-accurate
// approximations even for float64 inputs. For float64 these ops run as an
// MLX primitive of ours whose CPU kernel calls the C library in double
// precision, scheduled on the stream's CPU encoder like MLX's own kernels.
//
// Float32 on the CPU takes the same kernel: each value is widened, the
// function computed in double and the result rounded once, which is what
// Nx.BinaryBackend computes (Erlang's :math calls the same C library, and
// Nx rounds to float32 once). MLX's own float32 kernels are up to 1 ulp off
// (exp on 69% of inputs in [-10, 10), sigmoid 39%, tanh 5.5%), and on the
// 2-core x86_64 machine of the bench they are slower too: 10M values take
// 132 ms for MLX's exp against 53-64 ms this way, 168 against 83 for tanh,
// 296 against 37 for erf.

namespace {

enum f64_fn { F64_EXP, F64_EXPM1, F64_LOG, F64_TANH, F64_RSQRT, F64_LOG1P, F64_SIN, F64_COS, F64_TAN,
              F64_SINH, F64_COSH, F64_ASIN, F64_ACOS, F64_ATAN, F64_ASINH, F64_ACOSH, F64_ATANH, F64_ERF,
              F64_ERFC, F64_ERFINV, F64_ERFINV_NX, F64_SIGMOID, F64_CBRT };

// Giles' approximation of erfinv (single precision accurate), evaluated in
// double: what Nx computes for every float type.
double erfinv_giles(double y) {
  if (std::isnan(y) || y < -1.0 || y > 1.0) return NAN;
  if (y == 1.0) return INFINITY;
  if (y == -1.0) return -INFINITY;
  if (y == 0.0) return y;
  double w = -std::log((1.0 - y) * (1.0 + y));
  if (w < 5.0) {
    w -= 2.5;
    double p = 2.81022636e-08;
    p = 3.43273939e-07 + p * w; p = -3.5233877e-06 + p * w; p = -4.39150654e-06 + p * w;
    p = 0.00021858087 + p * w; p = -0.00125372503 + p * w; p = -0.00417768164 + p * w;
    p = 0.246640727 + p * w; p = 1.50140941 + p * w;
    return p * y;
  }
  w = std::sqrt(w) - 3.0;
  double p = -0.000200214257;
  p = 0.000100950558 + p * w; p = 0.00134934322 + p * w; p = -0.00367342844 + p * w;
  p = 0.00573950773 + p * w; p = -0.0076224613 + p * w; p = 0.00943887047 + p * w;
  p = 1.00167406 + p * w; p = 2.83297682 + p * w;
  return p * y;
}

// float64: Giles' approximation as a start, then Newton steps on erf.
double erfinv64(double y) {
  double x = erfinv_giles(y);
  if (!std::isfinite(x) || y == 0.0) return x;
  for (int i = 0; i < 3; i++) {
    double err = std::erf(x) - y;
    x -= err / (2.0 / std::sqrt(M_PI) * std::exp(-x * x));
  }
  return x;
}

// Where long double is x87's 64-bit-mantissa format, log1p and cbrt are
// computed in it and rounded once: glibc's double log1p and cbrt can be
// 1 ulp off (log1p(2.0) is 1.0986122886681096, not log(3)'s ...098).
#if LDBL_MANT_DIG == 64
double precise_log1p(double v) { return static_cast<double>(std::log1p(static_cast<long double>(v))); }
double precise_cbrt(double v) { return static_cast<double>(std::cbrt(static_cast<long double>(v))); }
#else
double precise_log1p(double v) { return std::log1p(v); }
double precise_cbrt(double v) { return std::cbrt(v); }
#endif

double f64_apply(int fn, double v) {
  switch (fn) {
    case F64_EXP: return std::exp(v);
    case F64_EXPM1: return std::expm1(v);
    case F64_LOG: return std::log(v);
    case F64_TANH: return std::tanh(v);
    case F64_RSQRT: return 1.0 / std::sqrt(v);
    case F64_LOG1P: return precise_log1p(v);
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
    case F64_ERFINV_NX: return erfinv_giles(v);
    case F64_SIGMOID: return 1.0 / (1.0 + std::exp(-v));
    default: return precise_cbrt(v);
  }
}

class F64Unary : public mx::UnaryPrimitive {
 public:
  F64Unary(mx::Stream s, int fn) : mx::UnaryPrimitive(s), fn_(fn) {}

  void eval_cpu(const std::vector<mx::array> &inputs, mx::array &out) override {
    const mx::array &in = inputs[0];
    // An input no one else holds gives its buffer to the result (MLX's
    // donation, as its own unary kernels do): computed in place.
    if (in.is_donatable() && in.itemsize() == out.itemsize() && in.flags().row_contiguous &&
        in.buffer_size() <= out.nbytes() + 16384)
      out.copy_shared_buffer(in);
    else
      out.set_data(mx::allocator::malloc(std::max<size_t>(out.nbytes(), 1)));
    auto &enc = mx::cpu::get_command_encoder(stream());
    enc.set_input_array(in);
    enc.set_output_array(out);
    // (the task, run and dropped on the stream's thread, holds views of the
    // two buffers, never the arrays themselves: an array's description is
    // not thread-safe, and the worker detaches and drops it meanwhile. MLX's
    // own kernels do the same; the input's buffer is kept alive by cpu::eval.)
    enc.dispatch([in = mx::array::unsafe_weak_copy(in), out = mx::array::unsafe_weak_copy(out), fn = fn_]() mutable {
      size_t n = in.size();
      if (in.dtype() == mx::float32) {
        const float *src = in.data<float>();
        float *dst = out.data<float>();
        // log1p as Nx defines it, log(x + 1) in double (x + 1 is exact for
        // all but tiny x, where Nx's value is what Nx gives): the float
        // nearest log1p otherwise, and Nx's bit for bit on any C library.
        if (fn == F64_LOG1P)
          for (size_t i = 0; i < n; i++) dst[i] = static_cast<float>(std::log(static_cast<double>(src[i]) + 1.0));
        else
          for (size_t i = 0; i < n; i++) dst[i] = static_cast<float>(f64_apply(fn, static_cast<double>(src[i])));
        return;
      }
      const double *src = in.data<double>();
      double *dst = out.data<double>();
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

// x float64, or float32 on a CPU stream: the result has x's type.
mx::array f64_unary(const mx::array &x, int fn, SD s) {
  auto st = mx::to_stream(s);
  auto xc = mx::contiguous(x, false, st);
  return mx::array(x.shape(), x.dtype(), std::make_shared<F64Unary>(st, fn), {xc});
}

// float64 anywhere (the GPU stream raises), float32 on a CPU stream.
bool via_double(const mx::array &x, SD s) {
  return x.dtype() == mx::float64 || (x.dtype() == mx::float32 && mx::to_stream(s).device == mx::Device::cpu);
}

}  // namespace

#define F64_OR_MLX(name, code, mlx_expr)                 \
  mx::array emlx_##name(const mx::array &x, SD s) {      \
    if (via_double(x, s)) return f64_unary(x, code, s);   \
    return mlx_expr;                                    \
  }

// ---- complex arguments with an infinite or NaN part ----
//
// MLX (like numpy) follows C99's Annex G there: tanh(inf + 3i) is 1, and
// asinh(inf + 3i) is inf + 0i. Nx defines these functions by the formulas
// of its Complex library, and Nx's own tests check what those give: tanh as
// sinh / cosh (NaN + NaN i at inf + 3i), atan, atanh, acosh and asinh by
// their logarithm formulas (asinh(inf + 3i) = log(z + sqrt(z z + 1)) =
// inf + i pi/4), and NaN + NaN i from acos and asin. Finite arguments keep
// MLX's result; the others take the formula, in the same complex
// arithmetic (C99 products and quotients, as BinaryBackend's give there).
namespace {

enum class CFn { tanh, acos, asin, atan, acosh, asinh, atanh };

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

mx::array c1(float re, float im) { return mx::array(std::complex<float>(re, im)); }

// NaN + NaN i of a shape, made from its parts (see complex_from).
mx::array nan_nan(const mx::Shape &shape, SD s) {
  auto nan = mx::broadcast_to(mx::array(kNaN), shape, s);
  return complex_from(nan, nan, s);
}

mx::array finite_parts(const mx::array &z, SD s) {
  return mx::logical_and(mx::isfinite(mx::real(z, s), s), mx::isfinite(mx::imag(z, s), s), s);
}

// z z as Complex.multiply/2 computes it, part by part with no C99
// recovery: (inf + inf i)^2 is NaN + NaN i there, not inf + inf i.
mx::array square_plain(const mx::array &z, SD s) {
  auto a = mx::real(z, s), b = mx::imag(z, s);
  auto ab = mx::multiply(a, b, s);
  return complex_from(mx::subtract(mx::multiply(a, a, s), mx::multiply(b, b, s), s), mx::add(ab, ab, s), s);
}

// Complex.sqrt/1 and Complex.log/1 at non-finite parts (C99's csqrt and
// clog keep more infinities): sqrt gives NaN + NaN i for a NaN part, then
// inf +- inf i for an infinite im, inf + 0i for re = inf and 0 + inf i for
// re = -inf; log is log(abs z) + i atan2(im, re) with Complex.abs/1 (NaN
// for two NaN parts, else inf for any non-finite part) and its atan2 (a
// finite im over re = inf gives +0, over -inf +pi).
mx::array where_c(const mx::array &m, float re, float im, const mx::array &x, SD s) {
  return mx::where(m, c1(re, im), x, s);
}

mx::array sqrt_nx(const mx::array &z, SD s) {
  auto a = mx::real(z, s), b = mx::imag(z, s);
  auto r = mx::sqrt(z, s);
  r = where_c(mx::equal(a, mx::array(-kInf), s), 0.0f, kInf, r, s);
  r = where_c(mx::equal(a, mx::array(kInf), s), kInf, 0.0f, r, s);
  r = where_c(mx::equal(b, mx::array(-kInf), s), kInf, -kInf, r, s);
  r = where_c(mx::equal(b, mx::array(kInf), s), kInf, kInf, r, s);
  return mx::where(mx::logical_or(mx::isnan(a, s), mx::isnan(b, s), s), nan_nan(z.shape(), s), r, s);
}

mx::array log_nx(const mx::array &z, SD s) {
  auto a = mx::real(z, s), b = mx::imag(z, s);
  auto mag = mx::where(finite_parts(z, s), emlx_abs(z, s), mx::array(kInf), s);
  mag = mx::where(mx::logical_and(mx::isnan(a, s), mx::isnan(b, s), s), mx::array(kNaN), mag, s);
  auto angle = mx::arctan2(b, a, s);
  auto finite_b = mx::isfinite(b, s);
  angle = mx::where(mx::logical_and(finite_b, mx::equal(a, mx::array(kInf), s), s), mx::array(0.0f), angle, s);
  angle = mx::where(mx::logical_and(finite_b, mx::equal(a, mx::array(-kInf), s), s),
                    mx::array(static_cast<float>(M_PI)), angle, s);
  return complex_from(mx::log(mag, s), angle, s);
}

mx::array nx_formula(CFn f, const mx::array &z, SD s) {
  auto one = c1(1.0f, 0.0f), i = c1(0.0f, 1.0f);
  switch (f) {
    case CFn::tanh: return mx::divide(mx::sinh(z, s), mx::cosh(z, s), s);
    case CFn::acos:
    case CFn::asin: return nan_nan(z.shape(), s);
    case CFn::atan: {  // 0.5 i (log(1 - i z) - log(1 + i z))
      auto iz = mx::multiply(i, z, s);
      auto d = mx::subtract(log_nx(mx::subtract(one, iz, s), s), log_nx(mx::add(one, iz, s), s), s);
      return mx::multiply(c1(0.0f, 0.5f), d, s);
    }
    case CFn::atanh:  // 0.5 log((1 + z) / (1 - z))
      return mx::multiply(c1(0.5f, 0.0f), log_nx(mx::divide(mx::add(one, z, s), mx::subtract(one, z, s), s), s), s);
    case CFn::acosh:  // log(z + sqrt(z z - 1))
      return log_nx(mx::add(z, sqrt_nx(mx::subtract(square_plain(z, s), one, s), s), s), s);
    case CFn::asinh:  // log(z + sqrt(z z + 1))
      return log_nx(mx::add(z, sqrt_nx(mx::add(square_plain(z, s), one, s), s), s), s);
  }
  return z;
}

// MLX's result r of f(z), with Nx's value where z has a non-finite part.
mx::array nx_nonfinite(CFn f, const mx::array &z, const mx::array &r, SD s) {
  if (z.dtype() != mx::complex64) return r;
  return mx::where(finite_parts(z, s), r, nx_formula(f, z, s), s);
}

}  // namespace

// Complex a ** b: Complex.pow/2 gives NaN + NaN i when either has a
// non-finite part, but 0 for a zero base and an exponent of +infinity + 0i,
// and 1 for 0 ** 0.
mx::array complex_pow_nonfinite(const mx::array &a0, const mx::array &b0, const mx::array &r, SD s) {
  auto a = mx::astype(a0, mx::complex64, s), b = mx::astype(b0, mx::complex64, s);
  auto base_zero = mx::equal(a, c1(0.0f, 0.0f), s);
  auto exp_inf = mx::logical_and(mx::equal(mx::real(b, s), mx::array(kInf), s),
                                 mx::equal(mx::imag(b, s), mx::array(0.0f), s), s);
  auto out = mx::where(mx::logical_and(finite_parts(a, s), finite_parts(b, s), s), r, nan_nan(r.shape(), s), s);
  out = mx::where(mx::logical_and(base_zero, exp_inf, s), c1(0.0f, 0.0f), out, s);
  // 0 ** 0 is 1 (MLX's exp(0 log 0) is NaN)
  return mx::where(mx::logical_and(base_zero, mx::equal(b, c1(0.0f, 0.0f), s), s), c1(1.0f, 0.0f), out, s);
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
F64_OR_MLX(asin, F64_ASIN, nx_nonfinite(CFn::asin, x, mx::arcsin(x, s), s))
F64_OR_MLX(acos, F64_ACOS, nx_nonfinite(CFn::acos, x, mx::arccos(x, s), s))
F64_OR_MLX(atan, F64_ATAN, nx_nonfinite(CFn::atan, x, mx::arctan(x, s), s))
F64_OR_MLX(asinh, F64_ASINH, nx_nonfinite(CFn::asinh, x, mx::arcsinh(x, s), s))
F64_OR_MLX(acosh, F64_ACOSH, nx_nonfinite(CFn::acosh, x, mx::arccosh(x, s), s))
F64_OR_MLX(atanh, F64_ATANH, nx_nonfinite(CFn::atanh, x, mx::arctanh(x, s), s))
F64_OR_MLX(erf, F64_ERF, mx::erf(x, s))
F64_OR_MLX(tanh, F64_TANH, nx_nonfinite(CFn::tanh, x, mx::tanh(x, s), s))
F64_OR_MLX(rsqrt, F64_RSQRT, mx::rsqrt(x, s))

// On the GPU, float32 takes a double-precision kernel of ours as well
// (kernels_gpu_math.cpp).
mx::array emlx_log(const mx::array &x, SD s) {
  if (via_double(x, s)) return f64_unary(x, F64_LOG, s);
  return gpu_precise_unary("log", x, s, [](const mx::array &a, SD t) { return mx::log(a, t); });
}
F64_OR_MLX(sigmoid, F64_SIGMOID,
           x.dtype() == mx::complex64
               ? mx::reciprocal(mx::add(mx::exp(mx::negative(x, s), s), mx::array(std::complex<float>(1.0f, 0.0f)), s), s)
               : mx::sigmoid(x, s))

mx::array emlx_cbrt(const mx::array &x, SD s) {
  if (via_double(x, s)) return f64_unary(x, F64_CBRT, s);
  // complex: the principal root in polar form, cbrt(|z|) at angle arg(z) / 3
  // (exp(log(z) / 3) makes cbrt(inf + 0i) inf + NaN i). A part whose cosine
  // or sine is 0 is 0, also for an infinite modulus.
  if (x.dtype() == mx::complex64) {
    auto re = mx::real(x, s), im = mx::imag(x, s);
    auto mag = mx::power(emlx_abs(x, s), mx::array(1.0f / 3.0f), s);
    auto th = mx::divide(mx::arctan2(im, re, s), mx::array(3.0f), s);
    auto zero = mx::array(0.0f);
    auto part = [&](const mx::array &t) {
      return mx::where(mx::equal(t, zero, s), zero, mx::multiply(mag, t, s), s);
    };
    return complex_from(part(mx::cos(th, s)), part(mx::sin(th, s)), s);
  }
  auto third = mx::array(1.0 / 3.0, x.dtype());
  return mx::multiply(mx::sign(x, s), mx::power(mx::abs(x, s), third, s), s);
}

// Narrower floats on the CPU: Nx's approximation evaluated in double and
// rounded once, as Nx computes it (MLX evaluates it in float32: the last
// digit differs, and so does every Nx.Random.normal draw).
mx::array emlx_erf_inv(const mx::array &x, SD s) {
  if (x.dtype() == mx::float64) return f64_unary(x, F64_ERFINV, s);
  if (via_double(x, s)) return f64_unary(x, F64_ERFINV_NX, s);
  if (is_float(x.dtype()) && mx::to_stream(s).device == mx::Device::cpu)
    return mx::astype(f64_unary(mx::astype(x, mx::float64, s), F64_ERFINV_NX, s), x.dtype(), s);
  return mx::erfinv(x, s);
}

mx::array emlx_erfc(const mx::array &x, SD s) {
  if (via_double(x, s)) return f64_unary(x, F64_ERFC, s);
  return mx::subtract(mx::array(1.0, x.dtype()), mx::erf(x, s), s);
}

}  // namespace emlx
