// The op-table machinery: the ops of emlx_ops.def as an enum, a table of
// names and signatures, and one switch that runs them on MLX.

#include <cstring>
#include <string>

#include <unistd.h>

#include "emlx_kernels.hpp"

namespace emlx {
namespace {

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
  auto cast = [&](const mx::array &x) { return OUT ? emlx_cast(x, *OUT, S) : x; };
  // Comparisons and logic meet in the promoted type, as MLX would cast
  // them; a scalar literal (Nx.equal(x, 0)) is converted here, on the host,
  // instead of by an AsType primitive (a kernel of its own on the GPU).
  auto common = [&] { return mx::promote_types(ARR(0).dtype(), ARR(1).dtype()); };
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
#define BINARY_KEEP(n, f)                                      \
  case OP_##n: {                                               \
    auto t = common();                                         \
    return {f(emlx_cast(ARR(0), t, S), emlx_cast(ARR(1), t, S), S)}; \
  }
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
#undef FLAG
}

}  // namespace

// (the op table's argument layout of `full`: "nIt", the value, the shape, the type)
std::optional<mx::array> full_value(int op, const emlx_arg *args) {
  if (op != OP_full) return std::nullopt;
  return emlx_scalar_array(NUM(0), DT(2));
}

namespace {

#undef DT
#undef NUM
#undef S
#undef OUT

// Where an op runs on a GPU worker. MLX's CUDA backend has no float64, no
// linear algebra (LU, QR, SVD, eigh, Cholesky, inverse, solves), no scatter
// of 64-bit integers or complex numbers and no complex inverse hyperbolics: those run on the worker's CPU stream, on the same arrays
// (MLX orders the two streams), and their results are ordinary arrays the
// GPU ops that follow consume.
bool cpu_only_op(int op) {
  switch (op) {
    case OP_qr:
    case OP_svd:
    case OP_eigh:
    case OP_lu:
    case OP_cholesky:
    case OP_solve:
    case OP_determinant:
    case OP_triangular_solve:
    case OP_nx_qr:
    case OP_nx_lu:
    case OP_nx_eigh:
    case OP_nx_cholesky:
    case OP_nx_solve:
    case OP_nx_determinant:
    case OP_dist_init:
      return true;
    // MLX's ring backend (TCP) works on host memory, NCCL on the GPU's
    case OP_dist_all:
    case OP_dist_send:
    case OP_dist_recv:
      return !dist_on_gpu();
    default:
      return false;
  }
}

bool scatter_op(int op) { return op == OP_indexed_add || op == OP_indexed_put || op == OP_window_scatter; }

// Complex inverse hyperbolic functions have no CUDA kernel.
bool complex_cpu_op(int op) { return op == OP_asinh || op == OP_acosh || op == OP_atanh; }

// The GPU's scatter takes neither 64-bit integers nor complex numbers.
bool no_gpu_scatter(mx::Dtype d) { return d == mx::int64 || d == mx::uint64 || d == mx::complex64; }

const mx::Stream &stream_for(const emlx_stream &s, int op, const emlx_arg *args, std::optional<mx::Dtype> out) {
  if (!s.cpu) return s.s;
  if (cpu_only_op(op) || (out && *out == mx::float64)) return *s.cpu;
  bool scatter = scatter_op(op), complex_cpu = complex_cpu_op(op);
  const char *sig = op_table[op].sig;
  for (int k = 0; sig[k]; k++) {
    const emlx_arg &a = args[k];
    if (a.kind == EMLX_ARG_ARR) {
      auto d = a.u.arr->a.dtype();
      if (d == mx::float64 || (scatter && no_gpu_scatter(d)) || (complex_cpu && d == mx::complex64)) return *s.cpu;
    } else if (a.kind == EMLX_ARG_ARRS) {
      for (int i = 0; i < a.u.arrs.n; i++)
        if (a.u.arrs.v[i]->a.dtype() == mx::float64) return *s.cpu;
    } else if (a.kind == EMLX_ARG_DTYPE && to_dtype(a.u.dtype) == mx::float64) {
      return *s.cpu;
    }
  }
  return s.s;
}

}  // namespace

const mx::Stream &stream_for_array(const emlx_stream &s, const mx::array &x) {
  return s.cpu && x.dtype() == mx::float64 ? *s.cpu : s.s;
}

// One op-table instruction, for a single op and for a program's replay
// alike: the out type, the stream, the op, the checks on its results, and
// the cast of every result whose type differs from the out type.
std::vector<mx::array> run_instr(int op, const emlx_stream &s, const emlx_arg *args, int out_dtype) {
  std::optional<mx::Dtype> out;
  if (out_dtype >= 0) out = to_dtype(out_dtype);
  const mx::Stream &stream = stream_for(s, op, args, out);
  auto results = run_op(op, stream, args, out);
  check_results(results);
  // A result with no elements needs no kernel (and MLX's CUDA kernels are
  // not all safe with empty grids): it becomes an empty constant, of the
  // output type (a cast of it would be a kernel over no elements too, which
  // mx::compile fuses; see empty_fused_kernel in emlx_program.cpp).
  for (auto &r : results)
    if (r.size() == 0) r = mx::zeros(r.shape(), out && *out != mx::float64 ? *out : r.dtype(), stream);
  if (out)
    for (auto &r : results)
      if (r.dtype() != *out) r = emlx_as_type(r, *out, r.dtype() == mx::float64 ? stream_for_array(s, r) : stream);
  return results;
}

}  // namespace emlx

using namespace emlx;  // the C entry points below use the shim's internals

extern "C" {

int emlx_op_count(void) { return OP_COUNT; }
const char *emlx_op_name(int op) { return op >= 0 && op < OP_COUNT ? op_table[op].name : nullptr; }
const char *emlx_op_signature(int op) { return op >= 0 && op < OP_COUNT ? op_table[op].sig : nullptr; }
int emlx_op_outputs(int op) { return op >= 0 && op < OP_COUNT ? op_table[op].outputs : 0; }

emlx_status emlx_op_run(int op, emlx_stream *s, const emlx_arg *args, int nargs, int out_dtype, emlx_arr **outs,
                        int *nouts) {
  *nouts = 0;
  return guard([&] {
    if (op < 0 || op >= OP_COUNT) throw arg_error("unknown op");
    if (static_cast<int>(std::strlen(op_table[op].sig)) != nargs) throw arg_error("wrong number of op arguments");
    note_work(1);
    auto results = run_instr(op, *s, args, out_dtype);
    if (results.size() > EMLX_MAX_OUTS) throw arg_error("too many op results");
    hand_out(results, outs);
    *nouts = static_cast<int>(results.size());
  });
}

}  // extern "C"
