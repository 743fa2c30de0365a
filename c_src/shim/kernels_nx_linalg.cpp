// Small float32 decompositions as Nx's own algorithms round them.
//
// Nx.BinaryBackend runs Nx's linear algebra as defn code: Cholesky-
// Banachiewicz, Gaussian elimination with partial pivoting, Householder QR
// with explicit reflectors, the closed forms of 2x2 and 3x3 determinants.
// Every op rounds to float32, but dots, sums and products accumulate in
// double and round once, and triangular solves run wholly in double. LAPACK
// computes the same factors in its own order (blocked, with reciprocals and
// fused updates), so its last digits differ from Nx's, and the answers that
// Nx's docs and users' tests print are Nx's. For float32 matrices up to a
// size the backend chooses (EMLX.Backend.LinAlg), these kernels compute
// those algorithms on the host in that rounding: Nx's answer bit for bit,
// and at this size faster than a chain of MLX ops around LAPACK.
//
// The arithmetic below is plain float and double C++: each float operation
// is the correctly rounded one that Nx.BinaryBackend's double-then-round
// gives for +, -, *, / and sqrt. The shim is built without FMA contraction
// (ISO C++ mode, no -mfma), which would fuse a product into a sum.

#include "emlx_kernels.hpp"

#include <mlx/backend/cpu/encoder.h>
#include <mlx/primitives.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

namespace emlx {
namespace {

enum NxKind { NX_CHOLESKY, NX_LU, NX_QR, NX_SOLVE, NX_DET, NX_EIGH };

// A row-major float matrix of one batch entry.
struct Mat {
  int r, c;
  std::vector<float> v;
  Mat(int rows, int cols) : r(rows), c(cols), v(static_cast<size_t>(rows) * cols, 0.0f) {}
  float &at(int i, int j) { return v[static_cast<size_t>(i) * c + j]; }
  float at(int i, int j) const { return v[static_cast<size_t>(i) * c + j]; }
};

float approx_zero(float x, float eps) { return std::fabs(x) <= eps ? 0.0f : x; }

// Nx.dot of two float32 operands: products and their sum in double, in
// order, rounded once.
Mat matmul(const Mat &a, const Mat &b) {
  Mat out(a.r, b.c);
  for (int i = 0; i < a.r; i++)
    for (int j = 0; j < b.c; j++) {
      double acc = 0.0;
      for (int k = 0; k < a.c; k++) acc = static_cast<double>(a.at(i, k)) * b.at(k, j) + acc;
      out.at(i, j) = static_cast<float>(acc);
    }
  return out;
}

// ---- Cholesky (Cholesky-Banachiewicz, row by row) ----
Mat cholesky(const Mat &a) {
  const float eps = 1.0e-10f;
  int n = a.r;
  Mat l(n, n);
  for (size_t k = 0; k < l.v.size(); k++) l.v[k] = 0.0f * a.v[k];  // Nx starts from 0.0 * a
  for (int i = 0; i < n; i++)
    for (int j = 0; j <= i; j++) {
      double acc = 0.0;
      for (int k = 0; k < j; k++) acc = static_cast<double>(l.at(i, k)) * l.at(j, k) + acc;
      float sum = static_cast<float>(acc);
      l.at(i, j) = i == j ? std::sqrt(a.at(i, i) - sum) : (a.at(i, j) - sum) / (l.at(j, j) + eps);
    }
  for (auto &x : l.v) x = approx_zero(x, eps);
  return l;
}

// ---- LU (right-looking elimination, partial pivoting) ----
struct LU {
  Mat l, u;
  std::vector<int> perm;  // row k of L U is row perm[k] of A
  int swaps = 0;
};

LU lu(Mat a) {
  int m = a.r, n = a.c;
  std::vector<int> perm(m);
  for (int i = 0; i < m; i++) perm[i] = i;
  int swaps = 0;
  for (int k = 0; k < m; k++) {
    int col = std::min(k, n - 1);
    // argmax of |a[r][k]| over r >= k, the first of equals (NaN the largest)
    int p = k;
    float best = std::fabs(a.at(k, col));
    for (int r = k + 1; r < m && !std::isnan(best); r++) {
      float x = std::fabs(a.at(r, col));
      if (std::isnan(x) || x > best) best = x, p = r;
    }
    if (p != k) {
      for (int j = 0; j < n; j++) std::swap(a.at(k, j), a.at(p, j));
      std::swap(perm[k], perm[p]);
      swaps++;
    }
    float d = a.at(k, col);
    if (!(d == 0.0f))
      for (int r = k + 1; r < m; r++) a.at(r, col) = a.at(r, col) / d;
    if (k < m - 1 && k < n - 1)
      for (int r = k + 1; r < m; r++)
        for (int j = k + 1; j < n; j++) a.at(r, j) = a.at(r, j) - a.at(r, k) * a.at(k, j);
  }
  LU f{Mat(m, m), Mat(m, n), perm, swaps};
  for (int i = 0; i < m; i++)
    for (int j = 0; j < m; j++) f.l.at(i, j) = j < i && j < n ? a.at(i, j) + 0.0f : (i == j ? 1.0f : 0.0f);
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) f.u.at(i, j) = j >= i ? a.at(i, j) : 0.0f;
  return f;
}

// ---- triangular solves, in double throughout (Nx.BinaryBackend's) ----
std::vector<double> forward(const Mat &l, const std::vector<double> &b) {
  int n = l.r;
  std::vector<double> y(n);
  for (int i = 0; i < n; i++) {
    double acc = 0.0;
    for (int j = 0; j < i; j++) acc = static_cast<double>(l.at(i, j)) * y[j] + acc;
    y[i] = (b[i] - acc) / l.at(i, i);
  }
  return y;
}

std::vector<double> backward(const Mat &u, const std::vector<double> &b) {
  int n = u.r;
  std::vector<double> x(n);
  for (int i = n - 1; i >= 0; i--) {
    double acc = 0.0;
    for (int j = n - 1; j > i; j--) acc = static_cast<double>(u.at(i, j)) * x[j] + acc;
    x[i] = (b[i] - acc) / u.at(i, i);
  }
  return x;
}

// Nx's solve: LU, the rows of b permuted, then the two triangular solves,
// each rounded to float32 (b is n x k, a vector being n x 1). A zero on U's
// diagonal sets singular (Nx's triangular solve raises there).
Mat solve(const Mat &a, const Mat &b, bool &singular) {
  LU f = lu(a);
  int n = a.r;
  for (int i = 0; i < n; i++) singular = singular || f.u.at(i, i) == 0.0f;
  Mat x(n, b.c);
  for (int c = 0; c < b.c; c++) {
    std::vector<double> col(n);
    for (int i = 0; i < n; i++) col[i] = b.at(f.perm[i], c) + 0.0f;
    auto y = forward(f.l, col);
    for (auto &v : y) v = static_cast<float>(v);
    auto r = backward(f.u, y);
    for (int i = 0; i < n; i++) x.at(i, c) = static_cast<float>(r[i]);
  }
  return x;
}

// ---- determinant ----

// Integer matrices keep their type in Nx's closed forms: products, sums and
// differences wrap at the type's width.
struct IntType {
  int bits;
  bool is_signed;
  int64_t wrap(uint64_t v) const {
    if (bits == 64) return static_cast<int64_t>(v);
    uint64_t mask = (uint64_t{1} << bits) - 1;
    v &= mask;
    if (is_signed && (v >> (bits - 1)) & 1) v |= ~mask;
    return static_cast<int64_t>(v);
  }
  float to_float(int64_t v) const {
    if (!is_signed && bits == 64) return static_cast<float>(static_cast<uint64_t>(v));
    return static_cast<float>(v);
  }
};

// The closed forms over t tiled twice along its columns: diagonal products
// (in double, rounded once), the 3x3 one as + + + - - -.
float det_small(const Mat &a) {
  auto t = [&](int i, int j) { return a.at(i, j % a.c); };
  auto prod = [&](int off, bool neg) {
    double p = 1.0;
    for (int i = 0; i < a.r; i++) p = static_cast<double>(t(i, neg ? 2 * a.c - 1 - i - off : i + off)) * p;
    return static_cast<float>(p);
  };
  if (a.r == 2) return prod(0, false) - prod(1, false);
  return prod(0, false) + prod(1, false) + prod(2, false) - prod(0, true) - prod(1, true) - prod(2, true);
}

float det_small_int(const std::vector<int64_t> &a, int n, const IntType &ty) {
  auto t = [&](int i, int j) { return static_cast<uint64_t>(a[static_cast<size_t>(i) * n + j % n]); };
  auto prod = [&](int off, bool neg) {
    uint64_t p = 1;
    for (int i = 0; i < n; i++) p = static_cast<uint64_t>(ty.wrap(t(i, neg ? 2 * n - 1 - i - off : i + off) * p));
    return p;
  };
  uint64_t r = n == 2 ? prod(0, false) - prod(1, false)
                      : static_cast<uint64_t>(ty.wrap(prod(0, false) + prod(1, false))) + prod(2, false);
  if (n == 3)
    for (int k = 0; k < 3; k++) r = static_cast<uint64_t>(ty.wrap(r)) - prod(k, true);
  return ty.to_float(ty.wrap(r));
}

// Past 3x3 (and 1x1): the sign of LU's row permutation times the product of
// U's diagonal, 0 where an entry of it is 0.
float det_lu(const Mat &a) {
  LU f = lu(a);
  double p = 1.0;
  bool zero = false;
  for (int i = 0; i < a.r; i++) {
    float d = f.u.at(i, i);
    zero = zero || d == 0.0f;
    p = static_cast<double>(d) * p;
  }
  if (zero) return 0.0f;
  float pf = static_cast<float>(p);
  return f.swaps % 2 ? -pf : pf;
}

// ---- QR (Householder, each reflector an explicit matrix) ----

// The reflector that zeroes x (a column, zero above i) below i.
Mat householder(const std::vector<float> &x, int i, float eps) {
  int m = static_cast<int>(x.size());
  double acc = 0.0;
  for (int k = 0; k < m; k++) acc = static_cast<double>(x[k]) * x[k] + acc;
  float norm_sq = static_cast<float>(acc), norm = std::sqrt(norm_sq);
  float xi = x[i];
  float ax = std::fabs(xi);
  float norm_sq_1on = norm_sq - ax * ax;
  float v0 = xi <= 0.0f ? xi - norm : -norm_sq_1on / (xi + norm);
  bool tiny = norm_sq_1on < eps;
  std::vector<float> v(x);
  v[i] = tiny ? 1.0f : v0;
  float div = tiny ? 1.0f : v0;
  for (auto &e : v) e = e / div;
  acc = 0.0;
  for (int k = 0; k < m; k++) acc = static_cast<double>(v[k]) * v[k] + acc;
  float scale = tiny ? 0.0f : 2.0f / static_cast<float>(acc);
  Mat h(m, m);
  for (int a = 0; a < m; a++)
    for (int b = 0; b < m; b++) {
      float e = a == b ? 1.0f : 0.0f;
      h.at(a, b) = a >= i && b >= i ? e - scale * (v[a] * v[b]) : e;
    }
  return h;
}

// {q, r} as Nx's QR returns them for an m x n matrix.
std::pair<Mat, Mat> qr(const Mat &a0, bool complete, float eps) {
  int m_in = a0.r, n_in = a0.c;
  bool wide = m_in < n_in;
  int m = wide ? n_in : m_in;
  int max_i = wide ? n_in - 1 : (m_in == n_in ? n_in - 2 : n_in - 1);
  Mat r(m, n_in);
  for (int i = 0; i < m_in; i++)
    for (int j = 0; j < n_in; j++) r.at(i, j) = a0.at(i, j);
  Mat q(m, m);
  for (int i = 0; i < m; i++) q.at(i, i) = 1.0f;
  for (int i = 0; i <= max_i; i++) {
    std::vector<float> x(m);
    for (int k = 0; k < m; k++) x[k] = k < i ? 0.0f : r.at(k, i);
    Mat h = householder(x, i, eps);
    r = matmul(h, r);
    q = matmul(q, h);
  }
  for (auto &e : q.v) e = approx_zero(e, eps);
  for (auto &e : r.v) e = approx_zero(e, eps);
  int k = !complete && m_in > n_in ? n_in : m_in;  // Q's columns, R's rows
  Mat qo(m_in, k), ro(k, n_in);
  for (int i = 0; i < m_in; i++)
    for (int j = 0; j < k; j++) qo.at(i, j) = q.at(i, j);
  for (int i = 0; i < k; i++)
    for (int j = 0; j < n_in; j++) ro.at(i, j) = r.at(i, j);
  return {qo, ro};
}

// ---- eigh (Nx's BlockEigh: parallel Jacobi over the four blocks) ----

// The rotation of each diagonal entry pair: {rt1, rt2, c, s} per index.
struct Rot {
  std::vector<float> rt1, rt2, c, s;
};

Rot rotations(const Mat &tl, const Mat &tr, const Mat &br) {
  int k = tl.r;
  Rot o{std::vector<float>(k), std::vector<float>(k), std::vector<float>(k), std::vector<float>(k)};
  for (int i = 0; i < k; i++) {
    float a = tl.at(i, i), b = tr.at(i, i), d = br.at(i, i);
    bool z = b == 0.0f;
    float tau = z ? 0.0f : (d - a) / (2.0f * (z ? 1.0f : b));
    float t = std::sqrt(1.0f + tau * tau);
    t = 1.0f / (tau + (tau >= 0.0f ? t : -t));
    if (std::fabs(b) <= 1.0e-5f * std::min(std::fabs(d), std::fabs(a))) t = 0.0f;
    // c = 1 / sqrt(1 + t^2) and s = t * c, which Nx's expression builder
    // rewrites as t / sqrt(1 + t^2) (a product by 1 / y becomes a quotient)
    float root = std::sqrt(1.0f + t * t);
    o.c[i] = 1.0f / root;
    o.s[i] = t / root;
    o.rt1[i] = a - t * b;
    o.rt2[i] = d + t * b;
  }
  return o;
}

// {x, y} rotated by rows (c, s of each row) or by columns.
void rotate(Mat &x, Mat &y, const Rot &r, bool rows) {
  for (int a = 0; a < x.r; a++)
    for (int b = 0; b < x.c; b++) {
      int k = rows ? a : b;
      float c = r.c[k], s = r.s[k], xv = x.at(a, b), yv = y.at(a, b);
      x.at(a, b) = xv * c - yv * s;
      y.at(a, b) = xv * s + yv * c;
    }
}

// Nx's permute_rows_in_col (rows = true) and permute_cols_in_row.
void permute(Mat &top, Mat &bottom, bool rows) {
  int k = top.r;
  if (k == 1) return;
  Mat t2(top), b2(bottom);
  auto get = [&](const Mat &m, int i, int j) { return rows ? m.at(i, j) : m.at(j, i); };
  auto set = [&](Mat &m, int i, int j, float v) { (rows ? m.at(i, j) : m.at(j, i)) = v; };
  for (int j = 0; j < k; j++) {
    set(t2, 0, j, get(top, 0, j));
    set(t2, 1, j, get(bottom, 0, j));
    for (int i = 2; i < k; i++) set(t2, i, j, get(top, i - 1, j));
    for (int i = 0; i < k - 1; i++) set(b2, i, j, get(bottom, i + 1, j));
    set(b2, k - 1, j, get(top, k - 1, j));
  }
  top = std::move(t2);
  bottom = std::move(b2);
}

float sq_norm(const Mat &tl, const Mat &tr, const Mat &bl, const Mat &br, bool off) {
  double acc = 0.0;
  for (int a = 0; a < tl.r; a++)
    for (int b = 0; b < tl.c; b++) {
      float x = off && a == b ? 0.0f : std::fabs(tl.at(a, b)), y = std::fabs(tr.at(a, b));
      float z = std::fabs(bl.at(a, b)), w = off && a == b ? 0.0f : std::fabs(br.at(a, b));
      acc = acc + static_cast<double>(x * x + y * y + z * z + w * w);
    }
  return static_cast<float>(acc);
}

// {eigenvalues, eigenvectors (columns)} as Nx's BlockEigh gives them.
std::pair<std::vector<float>, Mat> eigh(const Mat &a, double eps_d, int max_iter) {
  int n = a.r;
  float eps = static_cast<float>(eps_d);
  if (n == 1) {
    Mat v(1, 1);
    v.at(0, 0) = 1.0f;
    return {{a.at(0, 0)}, v};
  }
  int mid = (n + 1) / 2;
  Mat tl(mid, mid), tr(mid, mid), bl(mid, mid), br(mid, mid);
  auto at = [&](int i, int j) { return i < n && j < n ? a.at(i, j) : 0.0f; };
  for (int i = 0; i < mid; i++)
    for (int j = 0; j < mid; j++) {
      tl.at(i, j) = at(i, j);
      tr.at(i, j) = at(i, mid + j);
      bl.at(i, j) = at(mid + i, j);
      br.at(i, j) = at(mid + i, mid + j);
    }
  Mat vtl(mid, mid), vtr(mid, mid), vbl(mid, mid), vbr(mid, mid);
  for (int i = 0; i < mid; i++) vtl.at(i, i) = vbr.at(i, i) = 1.0f;
  float thr_factor = static_cast<float>(eps_d * eps_d);
  float frob = sq_norm(tl, tr, bl, br, false), off = sq_norm(tl, tr, bl, br, true);
  for (int iter = 0; off > thr_factor * frob && iter < max_iter; iter++) {
    for (int sweep = 0; sweep < n; sweep++) {
      Rot r = rotations(tl, tr, br);
      rotate(tl, bl, r, true);   // tl c - bl s, tl s + bl c
      rotate(tr, br, r, true);   // tr c - br s, tr s + br c
      rotate(tl, tr, r, false);  // tl c - tr s, tl s + tr c
      rotate(bl, br, r, false);  // bl c - br s, bl s + br c
      for (int i = 0; i < mid; i++) {
        tl.at(i, i) = r.rt1[i];
        tr.at(i, i) = 0.0f;
        bl.at(i, i) = 0.0f;
        br.at(i, i) = r.rt2[i];
      }
      permute(tl, tr, false);
      permute(bl, br, false);
      permute(tl, bl, true);
      permute(tr, br, true);
      rotate(vtl, vbl, r, true);
      rotate(vtr, vbr, r, true);
      permute(vtl, vbl, true);
      permute(vtr, vbr, true);
    }
    frob = sq_norm(tl, tr, bl, br, false);
    off = sq_norm(tl, tr, bl, br, true);
  }
  std::vector<float> w(n);
  for (int i = 0; i < n; i++) w[i] = i < mid ? tl.at(i, i) : br.at(i - mid, i - mid);
  // v = [[vtl, vtr], [vbl, vbr]] transposed: column j of the result is row j
  auto vfull = [&](int i, int j) {
    const Mat &blk = i < mid ? (j < mid ? vtl : vtr) : (j < mid ? vbl : vbr);
    return blk.at(i % mid, j % mid);
  };
  // by magnitude, the largest first; NaN first; equals keep their order
  std::vector<int> order(n);
  for (int i = 0; i < n; i++) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
    float ax = std::fabs(w[x]), ay = std::fabs(w[y]);
    if (std::isnan(ay)) return false;
    if (std::isnan(ax)) return true;
    return ax > ay;
  });
  std::vector<float> wo(n);
  Mat v(n, n);
  for (int k = 0; k < n; k++) {
    wo[k] = approx_zero(w[order[k]], eps);
    for (int i = 0; i < n; i++) v.at(i, k) = approx_zero(vfull(order[k], i), eps);
  }
  return {wo, v};
}

// ---- the primitive ----

class NxLinalg : public mx::Primitive {
 public:
  NxLinalg(mx::Stream s, int kind, bool flag, double eps, int iters, IntType ty)
      : mx::Primitive(s), kind_(kind), flag_(flag), eps_(eps), iters_(iters), ty_(ty) {}

  void eval_cpu(const std::vector<mx::array> &inputs, std::vector<mx::array> &outputs) override {
    for (auto &o : outputs) o.set_data(mx::allocator::malloc(std::max<size_t>(o.nbytes(), 1)));
    auto &enc = mx::cpu::get_command_encoder(stream());
    std::vector<mx::array> in, out;
    for (auto &a : inputs) {
      enc.set_input_array(a);
      in.push_back(mx::array::unsafe_weak_copy(a));
    }
    for (auto &o : outputs) {
      enc.set_output_array(o);
      out.push_back(mx::array::unsafe_weak_copy(o));
    }
    // (views of the buffers only: see F64Unary in kernels_f64.cpp)
    enc.dispatch([in = std::move(in), out = std::move(out), kind = kind_, flag = flag_, eps = eps_, iters = iters_,
                  ty = ty_]() mutable { run(in, out, kind, flag, eps, iters, ty); });
  }

  void eval_gpu(const std::vector<mx::array> &, std::vector<mx::array> &) override {
    throw std::runtime_error("Nx's linear algebra runs on the CPU stream");
  }

  const char *name() const override { return "EMLXNxLinalg"; }

  bool is_equivalent(const mx::Primitive &other) const override {
    auto *o = dynamic_cast<const NxLinalg *>(&other);
    return o && o->kind_ == kind_ && o->flag_ == flag_ && o->eps_ == eps_ && o->iters_ == iters_ &&
           o->ty_.bits == ty_.bits &&
           o->ty_.is_signed == ty_.is_signed;
  }

 private:
  static Mat read(const mx::array &a, size_t b) {
    int r = a.shape(-2), c = a.shape(-1);
    Mat m(r, c);
    std::memcpy(m.v.data(), a.data<float>() + b * m.v.size(), m.v.size() * sizeof(float));
    return m;
  }
  static void write(mx::array &a, size_t b, const Mat &m) {
    std::memcpy(a.data<float>() + b * m.v.size(), m.v.data(), m.v.size() * sizeof(float));
  }

  static void run(std::vector<mx::array> &in, std::vector<mx::array> &out, int kind, bool flag, double eps,
                  int iters, IntType ty) {
    const mx::array &a = in[0];
    int r = a.shape(-2), c = a.shape(-1);
    if (kind == NX_SOLVE) out[1].data<float>()[0] = 0.0f;
    size_t batch = a.size() / (static_cast<size_t>(r) * c);
    for (size_t b = 0; b < batch; b++) {
      switch (kind) {
        case NX_CHOLESKY: write(out[0], b, cholesky(read(a, b))); break;
        case NX_LU: {
          LU f = lu(read(a, b));
          Mat p(r, r);
          for (int j = 0; j < r; j++) p.at(f.perm[j], j) = 1.0f;
          write(out[0], b, p);
          write(out[1], b, f.l);
          write(out[2], b, f.u);
          break;
        }
        case NX_QR: {
          auto [q, rr] = qr(read(a, b), flag, static_cast<float>(eps));
          write(out[0], b, q);
          write(out[1], b, rr);
          break;
        }
        case NX_EIGH: {
          auto [w, v] = eigh(read(a, b), eps, iters);
          std::memcpy(out[0].data<float>() + b * r, w.data(), w.size() * sizeof(float));
          write(out[1], b, v);
          break;
        }
        case NX_SOLVE: {
          bool singular = false;
          write(out[0], b, solve(read(a, b), read(in[1], b), singular));
          if (singular) out[1].data<float>()[0] = 1.0f;
          break;
        }
        default: {
          float d;
          if (a.dtype() == mx::int64) {
            std::vector<int64_t> v(a.data<int64_t>() + b * r * c, a.data<int64_t>() + (b + 1) * r * c);
            d = det_small_int(v, r, ty);
          } else {
            Mat m = read(a, b);
            d = r == 2 || r == 3 ? det_small(m) : det_lu(m);
          }
          out[0].data<float>()[b] = d;
        }
      }
    }
  }

  int kind_;
  bool flag_;
  double eps_;
  int iters_;
  IntType ty_;
};

mx::Shape batch_of(const mx::array &a) { return mx::Shape(a.shape().begin(), a.shape().end() - 2); }

mx::Shape with(mx::Shape s, int r, int c) {
  s.push_back(r);
  s.push_back(c);
  return s;
}

mx::array f32(const mx::array &a, const mx::Stream &st) {
  return mx::contiguous(mx::astype(a, mx::float32, st), false, st);
}

std::vector<mx::array> make(const mx::Stream &st, int kind, bool flag, double eps, const std::vector<mx::Shape> &shapes,
                            const std::vector<mx::array> &inputs, IntType ty = {32, true}, int iters = 0) {
  std::vector<mx::Dtype> types(shapes.size(), mx::float32);
  return mx::array::make_arrays(shapes, types, std::make_shared<NxLinalg>(st, kind, flag, eps, iters, ty), inputs);
}

void check_square(const mx::array &a) {
  check_matrix(a);
  if (a.shape(-1) != a.shape(-2)) throw arg_error("expected a square matrix or a batch of them");
}

}  // namespace

std::vector<mx::array> emlx_nx_qr(const mx::array &a, bool complete, double eps, SD s) {
  check_matrix(a);
  auto st = mx::to_stream(s);
  int m = a.shape(-2), n = a.shape(-1);
  int k = !complete && m > n ? n : m;  // Q's columns, R's rows
  auto b = batch_of(a);
  return make(st, NX_QR, complete, eps, {with(b, m, k), with(b, k, n)}, {f32(a, st)});
}

std::vector<mx::array> emlx_nx_lu(const mx::array &a, SD s) {
  check_square(a);
  auto st = mx::to_stream(s);
  int n = a.shape(-1);
  auto b = batch_of(a);
  return make(st, NX_LU, false, 0.0f, {with(b, n, n), with(b, n, n), with(b, n, n)}, {f32(a, st)});
}

mx::array emlx_nx_cholesky(const mx::array &a, SD s) {
  check_square(a);
  auto st = mx::to_stream(s);
  return make(st, NX_CHOLESKY, false, 0.0f, {a.shape()}, {f32(a, st)})[0];
}

mx::array emlx_nx_solve(const mx::array &a, const mx::array &b0, SD s) {
  check_square(a);
  auto st = mx::to_stream(s);
  bool vec = b0.ndim() == a.ndim() - 1;
  auto b = vec ? mx::expand_dims(b0, -1, st) : b0;
  // (the kernel reads b's matrices batch by batch beside a's)
  if (b.ndim() != a.ndim() || b.shape(-2) != a.shape(-1) ||
      !std::equal(a.shape().begin(), a.shape().end() - 2, b.shape().begin()))
    throw arg_error("solve: b does not match a");
  auto r = make(st, NX_SOLVE, false, 0.0f, {b.shape(), {}}, {f32(a, st), f32(b, st)});
  // As Nx, a singular matrix raises (read here, as triangular_solve does).
  eval_here({r[1]});
  if (r[1].item<float>() != 0.0f) throw arg_error("can't solve for singular matrix");
  return vec ? mx::squeeze(r[0], -1, st) : r[0];
}

std::vector<mx::array> emlx_nx_eigh(const mx::array &a, double eps, int64_t max_iter, SD s) {
  check_square(a);
  auto st = mx::to_stream(s);
  int n = a.shape(-1);
  auto b = batch_of(a);
  auto w = b;
  w.push_back(n);
  return make(st, NX_EIGH, false, eps, {w, with(b, n, n)}, {f32(a, st)}, {32, true},
              static_cast<int>(std::min<int64_t>(max_iter, 1 << 30)));
}

mx::array emlx_nx_determinant(const mx::array &a, SD s) {
  check_square(a);
  auto st = mx::to_stream(s);
  int n = a.shape(-1);
  auto d = a.dtype();
  if (mx::issubdtype(d, mx::integer) && (n == 2 || n == 3)) {
    IntType ty{static_cast<int>(d.size()) * 8, mx::issubdtype(d, mx::signedinteger)};
    auto ai = mx::contiguous(mx::astype(a, mx::int64, st), false, st);
    return make(st, NX_DET, false, 0.0f, {batch_of(a)}, {ai}, ty)[0];
  }
  return make(st, NX_DET, false, 0.0f, {batch_of(a)}, {f32(a, st)})[0];
}

}  // namespace emlx
