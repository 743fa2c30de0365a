// Shape and index kernels with Nx semantics: creation, broadcast, pad,
// slices, select, sort, gather and scatter. Every index is checked or
// clamped here: MLX does not check bounds.

#include "emlx_kernels.hpp"

namespace emlx {

// ---- creation ----

// arange has no complex kernel on the GPU: count in float32 and convert.
static mx::array counting(double n, mx::Dtype d, SD s) {
  if (!is_complex(d)) return mx::arange(0.0, n, 1.0, d, s);
  return mx::astype(mx::arange(0.0, n, 1.0, mx::float32, s), d, s);
}

mx::array emlx_iota(const mx::Shape &shape, int64_t axis, mx::Dtype d, SD s) {
  if (axis >= static_cast<int64_t>(shape.size())) throw arg_error("iota axis out of range");
  if (axis < 0) {
    size_t n = 1;
    for (auto v : shape) n *= static_cast<size_t>(v);
    return mx::reshape(counting(static_cast<double>(n), d, s), shape, s);
  }
  mx::Shape one(shape.size(), 1);
  one[axis] = shape[axis];
  auto r = mx::reshape(counting(static_cast<double>(shape[axis]), d, s), one, s);
  return mx::broadcast_to(r, shape, s);
}

// The identity as row == column: mx::eye scatters, and the GPU has no
// scatter for 64-bit integers or complex numbers.
mx::array emlx_eye(const mx::Shape &shape, mx::Dtype d, SD s) {
  if (shape.size() < 2) throw arg_error("eye expects at least two dimensions");
  int n = shape[shape.size() - 2], m = shape[shape.size() - 1];
  auto rows = mx::reshape(mx::arange(n, s), {n, 1}, s);
  auto cols = mx::reshape(mx::arange(m, s), {1, m}, s);
  return mx::broadcast_to(mx::astype(mx::equal(rows, cols, s), d, s), shape, s);
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
  // A kernel reading element 0 of an empty "value" faults on the GPU.
  if (value.size() != 1) throw arg_error("the pad value must have exactly one element");
  auto v = mx::astype(mx::reshape(value, {}, s), x0.dtype(), s);
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
static void check_slice_lists(const mx::array &x, size_t starts, const mx::Shape &lengths, const mx::Shape &strides) {
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

// Dynamic starts (scalar arrays) clamped into range, as Nx does. Starts
// known on the host (constants, values from the BEAM) are clamped there and
// the slice is a static one: no clamping kernels, no dynamic-slice primitive.
static bool host_starts(const std::vector<mx::array> &starts, const mx::Shape &dims, const mx::Shape &sizes,
                        mx::Shape &out) {
  for (size_t i = 0; i < starts.size(); i++) {
    int64_t v;
    if (!host_int(starts[i], v)) return false;
    int64_t hi = std::max<int64_t>(0, dims[i] - sizes[i]);
    out.push_back(static_cast<int32_t>(std::clamp<int64_t>(v, 0, hi)));
  }
  return true;
}

static mx::array clamp_starts(const std::vector<mx::array> &starts, const mx::Shape &dims, const mx::Shape &sizes,
                              SD s) {
  std::vector<mx::array> parts;
  mx::Shape hi;
  for (size_t i = 0; i < starts.size(); i++) {
    parts.push_back(mx::reshape(mx::astype(starts[i], mx::int32, s), {1}, s));
    hi.push_back(std::max(0, dims[i] - sizes[i]));
  }
  auto st = mx::concatenate(parts, 0, s);
  auto top = mx::array(hi.begin(), {static_cast<int>(hi.size())}, mx::int32);
  return mx::clip(st, mx::array(0, mx::int32), top, s);
}

mx::array emlx_dynamic_slice(const mx::array &x, const std::vector<mx::array> &starts, const mx::Shape &lengths,
                             const mx::Shape &strides, SD s) {
  check_slice_lists(x, starts.size(), lengths, strides);
  mx::Shape fixed;
  if (host_starts(starts, x.shape(), lengths, fixed)) return emlx_slice(x, fixed, lengths, strides, s);
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
  auto u = mx::astype(upd, x.dtype(), s);
  mx::Shape fixed;
  if (host_starts(starts, x.shape(), upd.shape(), fixed)) {
    mx::Shape stop;
    for (size_t i = 0; i < fixed.size(); i++) stop.push_back(fixed[i] + upd.shape(static_cast<int>(i)));
    return mx::slice_update(x, u, fixed, stop, s);
  }
  std::vector<int> axes;
  for (int i = 0; i < static_cast<int>(x.ndim()); i++) axes.push_back(i);
  return mx::slice_update(x, u, clamp_starts(starts, x.shape(), upd.shape(), s), axes, s);
}

mx::array emlx_select(const mx::array &pred, const mx::array &a, const mx::array &b, SD s) {
  return mx::where(truthy(pred, s), a, b, s);
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
static mx::array clamp_index(const mx::array &idx, int dim, SD s) {
  if (!is_int(idx.dtype())) throw arg_error("indices must be integers");
  if (dim == 0) throw arg_error("cannot index into an axis of size 0");
  auto i = mx::astype(idx, mx::int64, s);
  return mx::clip(i, mx::array(int64_t(0)), mx::array(int64_t(dim > 0 ? dim - 1 : 0)), s);
}

static std::vector<mx::array> split_indices(const mx::array &x, const mx::array &idx, const std::vector<int> &axes,
                                            SD s) {
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

}  // namespace emlx
