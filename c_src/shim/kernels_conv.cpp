// Convolution and window kernels in Nx's layout and semantics.

#include "emlx_kernels.hpp"

namespace emlx {

// ---- windows ----

// A view of every window: shape out_dims ++ window_dims, after padding x
// with `value` (lo/hi per axis).
static mx::array window_view(const mx::array &x, const mx::array &value, const mx::Shape &window,
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

static mx::array identity_value(int kind, mx::Dtype d) {
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
  if (init.size() != 1) throw arg_error("the initial value must have exactly one element");
  auto initv = mx::astype(mx::reshape(init, {}, s), x.dtype(), s);
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

// ---- convolution ----
// Convolution as patches times kernel (one batched matmul per feature
// group), in Nx's layout. MLX has no float64 convolution kernel; float64
// matmul exists on the CPU, so float64 (and integer) convolutions run here.
static mx::array conv_patches(const mx::array &x, const mx::array &k, const std::vector<int> &strides,
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

static std::vector<int> inverse_perm(const std::vector<int> &p) {
  std::vector<int> inv(p.size());
  for (size_t i = 0; i < p.size(); i++) inv[p[i]] = static_cast<int>(i);
  return inv;
}

// One real convolution in Nx's layout ({N, C, spatial...} input, {O, I,
// spatial...} kernel) through MLX's channels-last conv_general.
static mx::array conv_nchw(const mx::array &x, const mx::array &k, const std::vector<int> &strides,
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

// One real convolution. MLX's own kernel has up to 3 spatial dimensions,
// feature groups in 1-D and 2-D only, and no float64: grouped 3-D
// convolutions (Axon's depthwise and separable conv3d), those of more than
// 3 spatial dimensions and float64 ones run as patches times kernel, one
// batched matmul over the groups.
static mx::array conv_real(const mx::array &x, const mx::array &k, const std::vector<int> &strides,
                           const std::vector<int> &lo, const std::vector<int> &hi, const std::vector<int> &in_dil,
                           const std::vector<int> &k_dil, int groups, SD s) {
  if (x.dtype() == mx::float64 || x.ndim() > 5 || (groups != 1 && x.ndim() > 4))
    return conv_patches(x, k, strides, lo, hi, in_dil, k_dil, groups, s);
  return conv_nchw(x, k, strides, lo, hi, in_dil, k_dil, groups, s);
}

static mx::array conv_typed(const mx::array &x, const mx::array &k, const std::vector<int> &strides,
                            const std::vector<int> &lo, const std::vector<int> &hi, const std::vector<int> &in_dil,
                            const std::vector<int> &k_dil, int groups, SD s) {
  if (is_complex(x.dtype())) {
    // (a + bi) * (c + di) = (ac - bd) + (ad + bc)i, four real convolutions
    auto a = mx::real(x, s), b = mx::imag(x, s), c = mx::real(k, s), d = mx::imag(k, s);
    auto f = [&](const mx::array &u, const mx::array &v) { return conv_real(u, v, strides, lo, hi, in_dil, k_dil, groups, s); };
    auto re = mx::subtract(f(a, c), f(b, d), s);
    auto im = mx::add(f(a, d), f(b, c), s);
    return complex_from(re, im, s);
  }
  return conv_real(x, k, strides, lo, hi, in_dil, k_dil, groups, s);
}

mx::array emlx_conv(const mx::array &x0, const mx::array &k0, const std::vector<int> &strides,
                    const std::vector<int> &lo, const std::vector<int> &hi, const std::vector<int> &in_dil,
                    const std::vector<int> &k_dil, int fgroups, int bgroups, const std::vector<int> &in_perm,
                    const std::vector<int> &k_perm, const std::vector<int> &out_perm, std::optional<mx::Dtype> out,
                    SD s) {
  mx::Dtype t = out ? *out : mx::promote_types(x0.dtype(), k0.dtype());
  // MLX convolves floats: integers go through float64 on the CPU (exact to
  // 2^53), float32 elsewhere. Half types go through float32 on the CPU, where
  // MLX's half-precision convolution is a plain loop and its float32 one a
  // BLAS GEMM; the result is rounded once to the half type.
  bool cpu = mx::to_stream(s).device == mx::Device::cpu;
  mx::Dtype ct = t;
  if (!is_float(t) && !is_complex(t)) ct = cpu ? mx::float64 : mx::float32;
  if (cpu && (t == mx::float16 || t == mx::bfloat16)) ct = mx::float32;
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

}  // namespace emlx
