// The C face of the shim: array and stream handles, the exception guard,
// element types, data in and out, memory, and the MLX version. Every entry
// point is extern "C" and catches every exception; nothing C++ crosses
// into the NIF.

#include <mlx/version.h>

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "emlx_kernels.hpp"

namespace emlx {
namespace {

thread_local std::string last_error;

const mx::Dtype dtype_table[EMLX_DTYPE_COUNT] = {
    mx::bool_,  mx::uint8,   mx::uint16,   mx::uint32,   mx::uint64,
    mx::int8,   mx::int16,   mx::int32,    mx::int64,    mx::float16,
    mx::bfloat16, mx::float32, mx::float64, mx::complex64};

}  // namespace

mx::Dtype to_dtype(int code) {
  if (code < 0 || code >= EMLX_DTYPE_COUNT) throw arg_error("unknown element type code");
  return dtype_table[code];
}

int from_dtype(mx::Dtype d) {
  for (int i = 0; i < EMLX_DTYPE_COUNT; i++)
    if (dtype_table[i] == d) return i;
  return -1;
}

emlx_status caught_status() {
  try {
    throw;
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

}  // namespace emlx

using namespace emlx;  // the C entry points below use the shim's internals

extern "C" {

// ---- errors, devices, streams ----

const char *emlx_last_error(void) { return last_error.c_str(); }

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
    std::optional<mx::Stream> cpu;
    if (dev == EMLX_DEV_GPU) cpu = mx::new_stream(mx::Device::cpu);
    *out = new emlx_stream(st, cpu);
    // (a CPU queue's small evals run its tasks here; a GPU queue's evals ask the GPU's events)
    if (dev == EMLX_DEV_CPU) (*out)->inl = cpu_inline_start(st);
    if (dev == EMLX_DEV_GPU) gpu_wait_start();
  });
}

void emlx_stream_free(emlx_stream *s) {
  if (!s) return;
  try {
    cpu_inline_stop(s->inl);
  } catch (...) {
  }
  delete s;
}

// ---- the process's exit ----

static std::atomic<int> exit_status{-1};
static std::terminate_handler previous_terminate;

[[noreturn]] static void terminate_at_exit() {
  int status = exit_status.load();
  if (status >= 0) _exit(status);
  if (previous_terminate) previous_terminate();
  std::abort();
}

void emlx_exit_guard_install(void) {
  std::terminate_handler was = std::set_terminate(terminate_at_exit);
  if (was != terminate_at_exit) previous_terminate = was;
}

void emlx_exit_begin(int status) { exit_status.store(status & 0xff); }

// MLX 0.32's CPU allocator is a function-local static (`static
// CommonAllocator allocator_` in common_allocator()), made at its first use
// and destroyed at exit; the scheduler and the CUDA allocator are leaked on
// purpose. Made lazily, it was registered after the NIF's exit handler and so
// destroyed before it: a worker freeing arrays while the queues were
// quiesced (a lazy graph dropped as the VM stopped) used it destroyed, and
// glibc aborted ("malloc(): unaligned fastbin chunk detected") or the VM
// segfaulted at exit, in about a third of the runs of a script that left an
// unevaluated Nx.Random.normal behind. A CUDA build's allocator is that
// leaked one (and making it at load would start CUDA there): only the CPU
// build's is made here (MLX's gpu::is_available is a constant of the build).
void emlx_statics_init(void) {
  try {
    if (!mx::is_available(mx::Device::gpu)) (void)mx::get_active_memory();
  } catch (...) {
  }
}

emlx_status emlx_stream_synchronize(emlx_stream *s) {
  return guard([&] { synchronize_here(s->s); });
}

// ---- arrays ----

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

static_assert(sizeof(emlx_arr) <= EMLX_ARR_BYTES && alignof(emlx_arr) <= 8, "EMLX_ARR_BYTES is too small");

emlx_arr *emlx_arr_retain_at(const emlx_arr *a, void *storage) { return new (storage) emlx_arr(a->a); }

void emlx_arr_drop_at(emlx_arr *a) {
  try {
    a->~emlx_arr();
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
    return emlx::computed_here(a->a) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

int emlx_arr_is_scheduled(const emlx_arr *a) {
  try {
    return a->a.status() != mx::array::Status::unscheduled ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

int emlx_arr_host_ints(const emlx_arr *h, int max, int any_size, int64_t *out) {
  try {
    return emlx::host_ints(h->a, max, any_size != 0, out);
  } catch (...) {
    return -1;
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

namespace {
std::vector<mx::array> arrays_of(emlx_arr **arrs, int n) {
  std::vector<mx::array> v;
  for (int i = 0; i < n; i++) v.push_back(arrs[i]->a);
  return v;
}
}  // namespace

emlx_status emlx_eval(emlx_stream *s, emlx_arr **arrs, int n) {
  (void)s;
  return guard([&] { eval_here(arrays_of(arrs, n)); });
}

emlx_status emlx_async_eval(emlx_stream *s, emlx_arr **arrs, int n) {
  (void)s;
  return guard([&] { async_eval_here(arrays_of(arrs, n)); });
}

emlx_status emlx_arr_host_view(emlx_stream *s, const emlx_arr *a, emlx_arr **view, const void **data,
                               size_t *nbytes) {
  *view = nullptr;
  return guard([&] {
    mx::array x = a->a;
    eval_here({x});
    const mx::Stream &st = stream_for_array(*s, x);
    if (!x.flags().row_contiguous) {
      x = mx::contiguous(x, false, st);
      eval_here({x});
    } else if (st.device == mx::Device::gpu && x.buffer_size() > x.nbytes()) {
      /* A view into a larger device buffer (Nx.to_number(t[i]) of a big
       * tensor): reading it in place would move the whole buffer to
       * unified memory (MLX's CUDA allocator does so on a host read), and
       * the buffer, once freed, would serve later results from there.
       * Copy the view's own bytes on the device and read those. */
      x = mx::copy(x, st);
      eval_here({x});
    }
    /* eval waits for x itself: no stream-wide sync, which would also wait
     * for work queued after it (e.g. the next decode step, async_eval'd). */
    auto *v = new emlx_arr(x);
    *data = v->a.data<void>();
    *nbytes = v->a.nbytes();
    *view = v;
  });
}

// ---- memory and version ----
//
// MLX's memory functions are not declared noexcept: should one throw, the
// counters read 0 and a limit call answers 0 rather than the exception
// crossing into C.

void emlx_memory_info(size_t *active, size_t *peak, size_t *cache) {
  *active = *peak = *cache = 0;
  try {
    *active = mx::get_active_memory();
    *peak = mx::get_peak_memory();
    *cache = mx::get_cache_memory();
  } catch (...) {
  }
}

void emlx_reset_peak_memory(void) {
  try {
    mx::reset_peak_memory();
  } catch (...) {
  }
}

void emlx_clear_cache(void) {
  try {
    mx::clear_cache();
  } catch (...) {
  }
}

size_t emlx_set_cache_limit(size_t limit) {
  try {
    return mx::set_cache_limit(limit);
  } catch (...) {
    return 0;
  }
}

size_t emlx_set_memory_limit(size_t limit) {
  try {
    return mx::set_memory_limit(limit);
  } catch (...) {
    return 0;
  }
}

const char *emlx_mlx_version(void) { return mx::version(); }

}  // extern "C"
