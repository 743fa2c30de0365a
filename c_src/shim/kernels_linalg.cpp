// Linear algebra and FFT kernels with Nx semantics: dot, FFT, triangular
// solve, decompositions, solve and determinant.

#include "emlx_kernels.hpp"

namespace emlx {

// ---- dot ----

// Integer GEMM, exact, through float64 GEMMs (BLAS) on the CPU. Integer
// products wrap modulo 2^w (w the type's bits), and modulo 2^w only the low w
// bits of each operand matter, as an unsigned number. Each operand is split
// into limbs of `limb_bits` bits (16, or 8 for 8-bit types); for every pair
// of limbs (i, j) whose shift (i + j) * limb_bits is below w, the f64 GEMM
// of the limbs sums K products below 2^(2 * limb_bits). The sums of one
// shift, at most `limbs` GEMMs, stay below limbs * K * 2^(2 * limb_bits),
// which exact_int_gemm_fits keeps under 2^53: every f64 sum is an exact
// integer. The shifted sums are added in uint64, which wraps, and the cast
// to the type keeps the low w bits: the two's-complement result.
static int int_limb_bits(mx::Dtype t) { return t.size() == 1 ? 8 : 16; }
static int int_limbs(mx::Dtype t) { return static_cast<int>(t.size()) * 8 / int_limb_bits(t); }

static bool exact_int_gemm_fits(mx::Dtype t, int64_t K) {
  if (!is_int(t)) return false;
  // limbs * K * 2^(2 * limb_bits) < 2^53
  return static_cast<double>(int_limbs(t)) * static_cast<double>(K) <
         std::ldexp(1.0, 53 - 2 * int_limb_bits(t));
}

static mx::array int_matmul_f64(const mx::array &a, const mx::array &b, mx::Dtype t, SD s) {
  int bits = int_limb_bits(t), limbs = int_limbs(t), w = static_cast<int>(t.size()) * 8;
  auto mask = mx::array(static_cast<uint64_t>((1u << bits) - 1), mx::uint64);
  auto split = [&](const mx::array &x) {
    auto u = mx::astype(x, mx::uint64, s);  // congruent to x modulo 2^64
    std::vector<mx::array> v;
    for (int i = 0; i < limbs; i++) {
      auto shifted = i ? mx::right_shift(u, mx::array(static_cast<uint64_t>(i * bits), mx::uint64), s) : u;
      v.push_back(mx::astype(mx::bitwise_and(shifted, mask, s), mx::float64, s));
    }
    return v;
  };
  auto la = split(a), lb = split(b);
  std::optional<mx::array> acc;
  for (int d = 0; d * bits < w; d++) {
    std::optional<mx::array> level;
    for (int i = 0; i <= d; i++) {
      auto p = mx::matmul(la[i], lb[d - i], s);
      level = level ? mx::add(*level, p, s) : p;
    }
    auto u = mx::astype(*level, mx::uint64, s);
    if (d) u = mx::left_shift(u, mx::array(static_cast<uint64_t>(d * bits), mx::uint64), s);
    acc = acc ? mx::add(*acc, u, s) : u;
  }
  return mx::astype(*acc, t, s);
}

// Multiply-adds up to which a float32 product on the CPU is computed in
// float64 (see emlx_dot): 2^16, e.g. 32x32 by 32x64.
constexpr double kSmallF32Gemm = 65536;

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
  // Without batch axes the product is a plain 2-D matmul (as Python's
  // a @ b), not a batch of one.
  bool batched = !ba.empty();
  // An identity permutation is no Transpose node (one less for MLX to schedule).
  auto permuted = [&](const mx::array &x, const std::vector<int> &p) {
    for (size_t i = 0; i < p.size(); i++)
      if (p[i] != static_cast<int>(i)) return mx::transpose(x, p, s);
    return x;
  };
  auto a3 = mx::reshape(permuted(a, pa), batched ? mx::Shape{B, M, K} : mx::Shape{M, K}, s);
  auto b3 = mx::reshape(permuted(b, pb), batched ? mx::Shape{B, K, N} : mx::Shape{K, N}, s);
  bool cpu = mx::to_stream(s).device == mx::Device::cpu;
  double macs = static_cast<double>(B) * M * N * K;
  auto r = [&] {
    if (cpu && t == mx::float32 && macs <= kSmallF32Gemm)
      // A small float32 product: a float64 GEMM of the exactly widened
      // inputs (every product exact, the sums in double), rounded once to
      // float32, which is what Nx.BinaryBackend computes. BLAS's float32
      // GEMM rounds at every step (covariance of a 3x2 tensor: 1.5555557
      // where Nx gives 1.5555555). Above the bound its speed wins.
      return mx::matmul(mx::astype(a3, mx::float64, s), mx::astype(b3, mx::float64, s), s);
    if (cpu && (t == mx::float16 || t == mx::bfloat16))
      // MLX's CPU GEMM for half types is a plain loop: an f32 GEMM (BLAS) of
      // the exactly widened inputs, rounded once to the half type, is both
      // faster and at least as accurate.
      return mx::matmul(mx::astype(a3, mx::float32, s), mx::astype(b3, mx::float32, s), s);
    if (is_float(t) || is_complex(t)) return mx::matmul(a3, b3, s);
    if (cpu && exact_int_gemm_fits(t, K)) return int_matmul_f64(a3, b3, t, s);
    // MLX has no integer matmul: multiply and sum, exact with wrap-around.
    return mx::sum(mx::multiply(mx::reshape(a3, {B, M, K, 1}, s), mx::reshape(b3, {B, 1, K, N}, s), s),
                   std::vector<int>{2}, false, s);
  }();
  mx::Shape shape;
  for (int v : ba) shape.push_back(a.shape(v));
  for (int v : fa) shape.push_back(a.shape(v));
  for (int v : fb) shape.push_back(b.shape(v));
  return mx::astype(mx::reshape(r, shape, s), t, s);
}

// transpose(dot(a, b), perm). When perm puts b's free axes before a's (the
// transposed product of Nx's gradient of a dot), this is dot(b, a): the
// result comes out contiguous, where a transposed view would make every
// consumer read it strided (a weight update on the GPU, say).
mx::array emlx_dot_transposed(const mx::array &a, const std::vector<int> &ca, const std::vector<int> &ba,
                              const mx::array &b, const std::vector<int> &cb, const std::vector<int> &bb,
                              const std::vector<int> &perm, std::optional<mx::Dtype> out, SD s) {
  if (ba.empty() && bb.empty()) {
    int na = static_cast<int>(a.ndim() - ca.size()), nb = static_cast<int>(b.ndim() - cb.size());
    std::vector<int> swapped;
    for (int i = 0; i < nb; i++) swapped.push_back(na + i);
    for (int i = 0; i < na; i++) swapped.push_back(i);
    if (perm == swapped) return emlx_dot(b, cb, bb, a, ca, ba, out, s);
  }
  return mx::transpose(emlx_dot(a, ca, ba, b, cb, bb, out, s), perm, s);
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
    r = complex_from(re, im, s);
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

static mx::array cast_for_linalg(const mx::array &x, std::optional<mx::Dtype> out, SD s) {
  mx::Dtype t = out ? *out : (is_float(x.dtype()) ? x.dtype() : mx::float32);
  if (t != mx::float64) t = mx::float32;
  return mx::astype(x, t, s);
}

static mx::array float_for_linalg(const mx::array &x, std::optional<mx::Dtype> out, SD s) {
  check_matrix(x);
  return cast_for_linalg(x, out, s);
}

// Triangular solves are cheap: on the CPU they run in float64 and round once,
// which gives the correctly rounded float32 answer Nx's reference gives.
static mx::array precise_for_linalg(const mx::array &x, std::optional<mx::Dtype> out, SD s) {
  if (x.ndim() >= 1)
    for (size_t i = 0; i < x.ndim(); i++)
      if (x.shape(static_cast<int>(i)) == 0) throw arg_error("linear algebra expects non-empty operands");
  if (mx::to_stream(s).device == mx::Device::cpu) return mx::astype(x, mx::float64, s);
  return float_for_linalg(x, out, s);
}

// ---- LU ----
//
// MLX 0.32's LU kernel (LUF: behind linalg::lu, lu_factor and solve) gives
// its factor a data_size of its byte count, not its element count
// (backend/cpu/luf.cpp, lu.set_data(..., lu.nbytes(), ...); the same on
// MLX's main branch). MLX's kernels walk a contiguous array by data_size:
// element-wise ops on a batched factor, ops over a 1x1 (or n x 1) one, and
// fused kernels that give the factor's buffer to their output then read and
// write itemsize times past the buffer: the heap corruption the defn
// fuzzer found (1x1 solves in compiled cond branches). Here the factor from
// lu_factor is read once, by a general copy (mx::contiguous of the
// column-major factor: a new buffer, data_size right), and only the copy is
// handed on. (LUF itself is not exported by libmlx: the row indices, its
// third output, are the factor's second sibling.)

// {LU factor (safe), pivots, row indices}
static std::vector<mx::array> lu_factors(const mx::array &a, SD s) {
  check_matrix(a);
  auto [lu, pivots] = mx::linalg::lu_factor(a, s);
  auto &sib = lu.siblings();
  mx::Shape rows(a.shape().begin(), a.shape().end() - 1);
  if (sib.size() != 2 || sib[1].dtype() != mx::uint32 || sib[1].shape() != rows)
    throw std::runtime_error("linalg::lu_factor: unexpected outputs");
  auto row_indices = sib[1];
  return {mx::contiguous(lu, false, s), pivots, row_indices};
}

// As MLX's linalg::lu, over lu_factors: {row permutation, L, U}.
static std::vector<mx::array> plu(const mx::array &a, SD s) {
  auto f = lu_factors(a, s);
  auto l = mx::tril(f[0], -1, s), u = mx::triu(f[0], 0, s);
  int m = a.shape(-2), n = a.shape(-1), k = std::min(m, n);
  if (n != k) {
    auto stop = l.shape();
    stop.back() = k;
    l = mx::slice(l, mx::Shape(l.ndim(), 0), stop, s);
  } else if (m != k) {
    auto stop = u.shape();
    stop[u.ndim() - 2] = k;
    u = mx::slice(u, mx::Shape(u.ndim(), 0), stop, s);
  }
  l = mx::add(l, mx::eye(m, k, 0, l.dtype(), s), s);
  return {f[2], l, u};
}

// As MLX's linalg::solve (a square, b's rows or vector matching), over plu.
static mx::array lu_solve(const mx::array &a, const mx::array &b, SD s) {
  if (a.shape(-1) != a.shape(-2)) throw arg_error("solve expects a square matrix");
  auto f = plu(a, s);
  auto perm = mx::argsort(f[0], -1, s);
  int axis = -1;
  if (b.ndim() >= 2) {
    perm = mx::expand_dims(perm, -1, s);
    axis = -2;
  }
  auto pb = mx::take_along_axis(b, perm, axis, s);
  auto y = mx::linalg::solve_triangular(f[1], pb, false, s);
  return mx::linalg::solve_triangular(f[2], y, true, s);
}

// Complex systems through the real embedding [[Ar, -Ai], [Ai, Ar]].
static mx::array complex_solve(const mx::array &a, const mx::array &b, SD s) {
  check_matrix(a);
  auto ar = mx::astype(mx::real(a, s), mx::float64, s), ai = mx::astype(mx::imag(a, s), mx::float64, s);
  bool vec = b.ndim() == a.ndim() - 1;
  auto bb = vec ? mx::expand_dims(b, -1, s) : b;
  auto br = mx::astype(mx::real(bb, s), mx::float64, s), bi = mx::astype(mx::imag(bb, s), mx::float64, s);
  auto top = mx::concatenate({ar, mx::negative(ai, s)}, -1, s);
  auto bottom = mx::concatenate({ai, ar}, -1, s);
  auto m = mx::concatenate({top, bottom}, -2, s);
  auto rhs = mx::concatenate({br, bi}, -2, s);
  auto x = lu_solve(m, rhs, s);
  int n = a.shape(-1);
  auto xs = x.shape();
  mx::Shape start(x.ndim(), 0), mid = xs;
  mid[mid.size() - 2] = n;
  mx::Shape start2(x.ndim(), 0);
  start2[start2.size() - 2] = n;
  auto xr = mx::slice(x, start, mid, s), xi = mx::slice(x, start2, xs, s);
  auto r = complex_from(xr, xi, s);
  return vec ? mx::squeeze(r, -1, s) : r;
}

mx::array emlx_triangular_solve(const mx::array &a0, const mx::array &b0, bool left, bool lower, bool transpose,
                                std::optional<mx::Dtype> out, SD s) {
  check_matrix(a0);
  if (b0.ndim() < 1 || b0.size() == 0) throw arg_error("linear algebra expects non-empty operands");
  // Nx raises on a singular (zero-diagonal) matrix: check it now.
  auto diag = mx::diagonal(a0, 0, -2, -1, s);
  auto singular = mx::any(mx::equal(diag, mx::zeros_like(diag, s), s), s);
  eval_here({singular});
  if (singular.item<bool>())
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
  // A vector b is a column (a x = b) or, with left_side: false, a row (x a = b).
  bool vec = b.ndim() == a.ndim() - 1;
  int vec_axis = left ? -1 : -2;
  if (vec) b = mx::expand_dims(b, vec_axis, s);
  mx::array x = a;
  if (left) {
    x = mx::linalg::solve_triangular(a, b, !lower, s);
  } else {
    // x a = b  <=>  a^T x^T = b^T
    auto xt = mx::linalg::solve_triangular(mx::swapaxes(a, -1, -2, s), mx::swapaxes(b, -1, -2, s), lower, s);
    x = mx::swapaxes(xt, -1, -2, s);
  }
  if (vec) x = mx::squeeze(x, vec_axis, s);
  return x;
}

// -0.0 becomes +0.0, as Nx's own decompositions produce.
static mx::array plus_zero(const mx::array &x, SD s) { return mx::add(x, mx::array(0.0, x.dtype()), s); }

// Sign of each vector along `axis` (-2: the columns, -1: the rows of a
// matrix): that of its entry of largest magnitude (the first of equals), so
// that this entry comes out positive once multiplied. LAPACK leaves each
// eigenvector's and singular vector's sign arbitrary; Nx's own algorithms
// (Jacobi rotations from the identity, QDWH) give vectors whose largest entry
// is positive in Nx's tests, and the rule makes EMLX's answer one fixed
// function of the input. Complex vectors keep LAPACK's phases.
static mx::array vector_signs(const mx::array &x, int axis, SD s) {
  auto at = mx::argmax(mx::abs(x, s), axis, true, s);
  auto big = mx::take_along_axis(x, at, axis, s);
  return mx::where(mx::less(big, mx::array(0, x.dtype()), s), mx::array(-1, x.dtype()), mx::array(1, x.dtype()), s);
}

// Ones appended to signs {..., k} (along the last axis) up to len.
static mx::array signs_to(const mx::array &sign, int len, SD s) {
  int k = sign.shape(-1);
  if (len == k) return sign;
  auto shape = sign.shape();
  shape.back() = len - k;
  return mx::concatenate({sign, mx::ones(shape, sign.dtype(), s)}, -1, s);
}

// Signs as Nx's Householder QR gives them. Where a column's part below the
// diagonal is nonzero, Nx's reflection leaves +norm on R's diagonal and
// LAPACK's -sign(alpha)·norm; where it is zero, neither reflects and R_ii
// keeps its sign. So Q's column i and R's row i change sign together
// (Q R stays A) where R_ii < 0 and step i reflected. Step i certainly did
// not reflect when A's columns 0..i are already zero below the diagonal (no
// step before it reflected either); a step that met zeros made by earlier
// reflections is taken as reflecting. The extra columns of a tall A's
// complete Q span the same space as Nx's but need not be its basis.
// Complex factors keep LAPACK's phases.
static std::pair<mx::array, mx::array> nx_signs(const mx::array &a, const mx::array &q, const mx::array &r, SD s) {
  if (is_complex(r.dtype())) return {q, r};
  int m = a.shape(-2), n = a.shape(-1), k = std::min(m, n);
  auto zero = [&](const mx::array &x) { return mx::array(0, x.dtype()); };
  // still_triangular[i]: columns 0..i of A are zero below the diagonal
  auto below = mx::multiply(mx::abs(a, s), mx::tril(mx::ones({m, n}, a.dtype(), s), -1, s), s);
  auto clean = mx::equal(mx::max(below, -2, false, s), zero(below), s);
  auto still_triangular = mx::astype(mx::cumprod(mx::astype(clean, mx::int32, s), -1, false, true, s), mx::bool_, s);
  mx::Shape start(still_triangular.ndim(), 0), stop = still_triangular.shape();
  stop.back() = k;
  still_triangular = mx::slice(still_triangular, start, stop, s);
  auto d = mx::diagonal(r, 0, -2, -1, s);
  auto flip = mx::logical_and(mx::less(d, zero(d), s), mx::logical_not(still_triangular, s), s);
  if (m <= n) {
    // The last row has nothing below the diagonal: neither reflects there,
    // and R's last entry is the pivot that the reflections before left.
    // Both reflect at the same steps, so det Q is the same for both: the
    // last row flips when an odd number of the others did.
    auto last = mx::equal(mx::arange(k, mx::int32, s), mx::array(k - 1, mx::int32), s);
    flip = mx::logical_and(flip, mx::logical_not(last, s), s);
    auto odd = mx::equal(mx::remainder(mx::sum(mx::astype(flip, mx::int32, s), -1, true, s), mx::array(2), s),
                         mx::array(1), s);
    flip = mx::logical_or(flip, mx::logical_and(last, odd, s), s);
  }
  auto sign = mx::where(flip, mx::array(-1, d.dtype()), mx::array(1, d.dtype()), s);
  auto qs = mx::multiply(q, mx::expand_dims(signs_to(sign, q.shape(-1), s), -2, s), s);
  auto rs = mx::multiply(r, mx::expand_dims(signs_to(sign, r.shape(-2), s), -1, s), s);
  return {qs, rs};
}

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
    auto [qp, rp] = nx_signs(a, q, rr, s);
    return {plus_zero(qp, s), plus_zero(rp, s)};
  }
  auto [q, r] = mx::linalg::qr(a, s);
  auto [qp, rp] = nx_signs(a, q, r, s);
  return {plus_zero(qp, s), plus_zero(rp, s)};
}

// The first k entries of x along axis (-1 or -2).
static mx::array head(const mx::array &x, int axis, int k, SD s) {
  auto stop = x.shape();
  stop[stop.size() + axis] = k;
  return mx::slice(x, mx::Shape(x.ndim(), 0), stop, s);
}

std::vector<mx::array> emlx_svd(const mx::array &a0, bool full, std::optional<mx::Dtype> out, SD s) {
  auto a = float_for_linalg(a0, out, s);
  auto r = mx::linalg::svd(a, true, s);
  int m = a.shape(-2), n = a.shape(-1), k = std::min(m, n);
  auto &u = r[0], &vt = r[2];
  if (!full) {
    u = head(u, -1, k, s);
    vt = head(vt, -2, k, s);
  }
  if (!is_complex(a.dtype())) {
    // The first k singular vectors of the smaller side (V's for a tall or
    // square A, U's for a wide one, as Nx takes the SVD of its adjoint) get
    // a positive largest entry; the other side's flip with them (U S Vt
    // stays A).
    auto sign = m >= n ? mx::squeeze(vector_signs(head(vt, -2, k, s), -1, s), -1, s)
                       : mx::squeeze(vector_signs(head(u, -1, k, s), -2, s), -2, s);
    u = mx::multiply(u, mx::expand_dims(signs_to(sign, u.shape(-1), s), -2, s), s);
    vt = mx::multiply(vt, mx::expand_dims(signs_to(sign, vt.shape(-2), s), -1, s), s);
  }
  return {plus_zero(u, s), plus_zero(r[1], s), plus_zero(vt, s)};
}

std::vector<mx::array> emlx_eigh(const mx::array &a0, std::optional<mx::Dtype> out, SD s) {
  auto a = float_for_linalg(a0, out, s);
  auto [w, v] = mx::linalg::eigh(a, "L", s);
  // Nx orders eigenvalues by absolute value, the largest first (LAPACK:
  // ascending values). Flipped first, so that of two of equal magnitude the
  // positive one comes first.
  w = mx::flip(w, -1, s);
  v = mx::flip(v, -1, s);
  auto order = mx::argsort(mx::negative(mx::abs(w, s), s), -1, s);
  w = mx::take_along_axis(w, order, -1, s);
  auto cols = mx::broadcast_to(mx::expand_dims(order, -2, s), v.shape(), s);
  v = mx::take_along_axis(v, cols, -1, s);
  if (!is_complex(v.dtype())) v = mx::multiply(v, vector_signs(v, -2, s), s);
  return {plus_zero(w, s), plus_zero(v, s)};
}

std::vector<mx::array> emlx_lu(const mx::array &a0, std::optional<mx::Dtype> out, SD s) {
  auto a = float_for_linalg(a0, out, s);
  auto r = plu(a, s);  // {pivots as a permutation vector, L, U}
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
  auto x = lu_solve(a, vec ? mx::expand_dims(b, -1, s) : b, s);
  return vec ? mx::squeeze(x, -1, s) : x;
}

// MLX's det is sign * exp(log|det|), and its CPU exp overflows at float32's
// range even in float64 (det(10 I_38) came out 9.99996e37, det(10 I_39) Inf).
// Past 3x3 this multiplies U's diagonal instead, in the matrix's own type, as
// Nx does; the sign comes from the row swaps.
mx::array emlx_determinant(const mx::array &a0, std::optional<mx::Dtype> out, SD s) {
  auto a = float_for_linalg(a0, out, s);
  int n = a.shape(-1);
  if (n <= 3 || n != a.shape(-2)) return mx::linalg::det(a, s);
  auto f = lu_factors(a, s);
  auto &lu = f[0], &pivots = f[1];
  auto swaps = mx::sum(mx::not_equal(mx::astype(pivots, mx::int32, s), mx::arange(0, n, mx::int32, s), s), -1,
                       false, s);
  auto odd = mx::equal(mx::remainder(swaps, mx::array(2, mx::int32), s), mx::array(1, mx::int32), s);
  auto sign = mx::where(odd, mx::array(-1.0, a.dtype()), mx::array(1.0, a.dtype()), s);
  return mx::multiply(mx::prod(mx::diagonal(lu, 0, -2, -1, s), -1, false, s), sign, s);
}

}  // namespace emlx
