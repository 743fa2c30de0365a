/*
 * The C face of the MLX shim.
 *
 * Everything MLX (C++) lives behind this header; the NIF is plain C11 and
 * only ever sees opaque handles. Every function here catches every C++
 * exception: a non-zero status is returned and the message is kept in a
 * thread-local buffer read with emlx_last_error().
 */
#ifndef EMLX_SHIM_H
#define EMLX_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct emlx_arr emlx_arr;         /* one mx::array handle */
typedef struct emlx_stream emlx_stream;   /* one mx::Stream, owned by a worker */
typedef struct emlx_program emlx_program; /* a program (see emlx_program_run) */

/* Element types, in the order the codec knows them. */
typedef enum {
  EMLX_BOOL = 0,
  EMLX_U8,
  EMLX_U16,
  EMLX_U32,
  EMLX_U64,
  EMLX_S8,
  EMLX_S16,
  EMLX_S32,
  EMLX_S64,
  EMLX_F16,
  EMLX_BF16,
  EMLX_F32,
  EMLX_F64,
  EMLX_C64,
  EMLX_DTYPE_COUNT
} emlx_dtype;

typedef enum { EMLX_DEV_CPU = 0, EMLX_DEV_GPU = 1 } emlx_device;

typedef enum {
  EMLX_OK = 0,
  EMLX_ERR_MLX = 1, /* MLX threw: becomes EMLX.NIFError */
  EMLX_ERR_ARG = 2  /* a check in the shim failed: becomes ArgumentError */
} emlx_status;

#define EMLX_MAX_DIMS 32
#define EMLX_MAX_ARGS 16
#define EMLX_MAX_OUTS 4

/* Argument kinds, each one letter in an op's signature string. */
typedef enum {
  EMLX_ARG_ARR = 'a',    /* one array */
  EMLX_ARG_ARRS = 'A',   /* a list of arrays */
  EMLX_ARG_INT = 'i',    /* int64 */
  EMLX_ARG_INTS = 'I',   /* a list of int64 (shape, axes, starts...) */
  EMLX_ARG_FLOAT = 'f',  /* double */
  EMLX_ARG_DTYPE = 't',  /* an element type */
  EMLX_ARG_BOOL = 'b',   /* true/false */
  EMLX_ARG_SCALAR = 'n', /* a number: integer, float, complex, nan/inf */
  EMLX_ARG_PROGRAM = 'p' /* a program (only in a program's loop instruction) */
} emlx_arg_kind;

typedef enum { EMLX_SCALAR_INT = 0, EMLX_SCALAR_UINT, EMLX_SCALAR_FLOAT, EMLX_SCALAR_COMPLEX } emlx_scalar_kind;

typedef struct {
  emlx_scalar_kind kind;
  int64_t i;
  uint64_t u;
  double re, im;
} emlx_scalar;

typedef struct {
  char kind; /* an emlx_arg_kind */
  union {
    emlx_arr *arr;
    struct {
      emlx_arr **v;
      int n;
    } arrs;
    int64_t i;
    struct {
      int64_t *v;
      int n;
    } ints;
    double f;
    int dtype;
    int b;
    emlx_scalar scalar;
    emlx_program *prog;
  } u;
} emlx_arg;

/* ---- the op table (see emlx_ops.def) ---- */
int emlx_op_count(void);
const char *emlx_op_name(int op);
const char *emlx_op_signature(int op);
int emlx_op_outputs(int op);

/*
 * Runs op `op` on stream `s`. On success writes up to EMLX_MAX_OUTS new
 * handles to outs and their count to nouts. When out_dtype >= 0 every
 * result is cast to it when its own type differs.
 */
emlx_status emlx_op_run(int op, emlx_stream *s, const emlx_arg *args, int nargs, int out_dtype,
                        emlx_arr **outs, int *nouts);

const char *emlx_last_error(void);

/*
 * Programs: a flat list of op-table instructions over slots. Slots
 * 0..ninputs-1 are the inputs; each instruction appends its results. In an
 * instruction's args, array arguments ('a') hold a slot number in u.i, and
 * array lists ('A') hold slot numbers in u.ints.
 *
 * One instruction is not of the op table: op EMLX_OP_WHILE, a loop run on
 * the worker thread. Its args: 'I' the slots of the initial state (n
 * arrays), 'p' the condition program, 'I' its inputs, 'p' the body
 * program, 'I' its inputs. An input entry m >= 0 is slot m of the
 * enclosing program; m < 0 is element -m-1 of the loop's current state.
 * The condition returns one scalar, the body the n arrays of the next
 * state; the instruction's n results are the state once the condition is
 * zero.
 *
 * And op EMLX_OP_COND, a branch: its args 'p' the predicate program, 'I'
 * its input slots, 'p' the program run when the predicate is not zero, 'I'
 * its input slots, 'p' the program run otherwise, 'I' its input slots. Its
 * results are those of the branch run (the two return as many arrays).
 */
#define EMLX_OP_WHILE (-2)
#define EMLX_OP_COND (-3)

typedef struct {
  int op;
  int out_dtype;
  int nargs;
  emlx_arg args[EMLX_MAX_ARGS];
} emlx_instr;

typedef struct emlx_compiled emlx_compiled; /* an mx::compile'd replay, per program */

struct emlx_program {
  emlx_instr *instrs;
  int ninstrs;
  int ninputs;
  int *out_slots;
  int nouts;
  int plain;               /* never under mx::compile: it holds a loop */
  emlx_compiled *compiled; /* made and used on the program's queue thread */
};

/*
 * Replays the program on stream s and writes the arrays of its out_slots.
 * With `compile` (and unless the program is plain), the replay runs under
 * mx::compile, made once and kept in p->compiled (free it with
 * emlx_compiled_free on the same thread); a program whose tracing fails
 * replays plainly, then and on every later run. Loop bodies and conditions
 * are compiled the same way, each in its own program.
 */
emlx_status emlx_program_run(emlx_stream *s, emlx_program *p, emlx_arr **inputs, int ninputs, int compile,
                             emlx_arr **outs);
void emlx_compiled_free(emlx_compiled *c);

/* ---- streams (one per worker thread, created on that thread) ---- */
int emlx_device_available(emlx_device dev);
/* The process's exit has begun with `status` (called from the NIF's exit
 * handler, once the queues are quiesced): from now on, a C++ exception
 * that escapes any thread (MLX's CUDA teardown racing the driver's own,
 * "cudaSetDevice ... driver shutting down") ends the process with that
 * status instead of std::terminate's abort. Installed by
 * emlx_exit_guard_install at load; before the exit the previous
 * terminate handler runs as it would. */
void emlx_exit_guard_install(void);
void emlx_exit_begin(int status);
/* Makes MLX's function-local statics that are destroyed at the process's
 * exit (the CPU build's allocator) before the NIF registers its exit
 * handler: exit handlers and static destructors run in the reverse order of
 * their registration, so the handler that quiesces the queues then runs
 * before they are destroyed. Call it at load, before on_exit. */
void emlx_statics_init(void);
emlx_status emlx_stream_new(emlx_device dev, emlx_stream **out);
void emlx_stream_free(emlx_stream *s);
emlx_status emlx_stream_synchronize(emlx_stream *s);

/* ---- arrays ---- */
emlx_arr *emlx_arr_retain(const emlx_arr *a); /* a new handle on the same array; NULL on OOM */
void emlx_arr_free(emlx_arr *a);
/* A handle made in caller-owned storage of EMLX_ARR_BYTES (aligned to 8),
 * with no allocation; emlx_arr_drop_at ends it, leaving the storage. */
#define EMLX_ARR_BYTES 16
emlx_arr *emlx_arr_retain_at(const emlx_arr *a, void *storage);
void emlx_arr_drop_at(emlx_arr *a);
int emlx_arr_ndim(const emlx_arr *a);
void emlx_arr_shape(const emlx_arr *a, int64_t *dims);
void emlx_arr_strides(const emlx_arr *a, int64_t *strides);
int emlx_arr_dtype(const emlx_arr *a);
/* Whether the array is computed, read without changing it (callable from a
 * BEAM thread while its worker uses the array): one started by async_eval
 * and not yet waited for counts as not computed. */
int emlx_arr_is_available(const emlx_arr *a);
/* Whether the array's computation has started (an eval or async_eval took
 * it) or is done: read the same way. */
int emlx_arr_is_scheduled(const emlx_arr *a);
/* An available, row-contiguous integer array's values, read in place (no
 * evaluation, no stream): the count, or -1 when it has more than max
 * elements, is not computed yet, or its memory may not be the host's (on
 * the GPU only buffers of at most 8 bytes are read: MLX's CUDA allocator
 * keeps those in host-visible memory, and reading a larger device buffer
 * would copy it with a CUDA call on this thread; any_size 1 allows any,
 * for the CPU). */
int emlx_arr_host_ints(const emlx_arr *a, int max, int any_size, int64_t *out);
size_t emlx_dtype_size(int dtype);

/* Copies `nbytes` of host data into a new array of the given shape and type. */
emlx_status emlx_arr_from_bytes(emlx_stream *s, const void *data, size_t nbytes, const int64_t *dims,
                                int ndim, int dtype, emlx_arr **out);

/* Evaluates the arrays on stream s. */
emlx_status emlx_eval(emlx_stream *s, emlx_arr **arrs, int n);
/* mx::async_eval: schedules the arrays' computation and returns. */
emlx_status emlx_async_eval(emlx_stream *s, emlx_arr **arrs, int n);

/*
 * Evaluates a and returns a row-contiguous evaluated handle on the same
 * data (or a contiguous copy) with its host pointer and byte size.
 */
emlx_status emlx_arr_host_view(emlx_stream *s, const emlx_arr *a, emlx_arr **view, const void **data,
                               size_t *nbytes);

/* ---- safetensors files (emlx_io.cpp) ---- */

typedef struct emlx_tensor_file emlx_tensor_file; /* the named arrays and metadata of one file */

/* Reads a .safetensors file with MLX's loader on stream s (its CPU stream on
 * a GPU worker: MLX reads files on the CPU) and evaluates every array. */
emlx_status emlx_load_safetensors(emlx_stream *s, const char *path, emlx_tensor_file **out);
int emlx_tensor_file_count(const emlx_tensor_file *f);
const char *emlx_tensor_file_name(const emlx_tensor_file *f, int i);
/* A new handle on array i (NULL when out of memory). */
emlx_arr *emlx_tensor_file_array(const emlx_tensor_file *f, int i);
int emlx_tensor_file_meta_count(const emlx_tensor_file *f);
const char *emlx_tensor_file_meta_key(const emlx_tensor_file *f, int i);
const char *emlx_tensor_file_meta_value(const emlx_tensor_file *f, int i);
void emlx_tensor_file_free(emlx_tensor_file *f);

/* Writes n named arrays and nmeta metadata strings to a .safetensors file
 * with MLX's writer (the arrays are evaluated first). */
emlx_status emlx_save_safetensors(emlx_stream *s, const char *path, const char *const *names, emlx_arr *const *arrs,
                                  int n, const char *const *meta_keys, const char *const *meta_values, int nmeta);

/* ---- memory ---- */
void emlx_memory_info(size_t *active, size_t *peak, size_t *cache);
void emlx_reset_peak_memory(void);
void emlx_clear_cache(void);
size_t emlx_set_cache_limit(size_t limit);
size_t emlx_set_memory_limit(size_t limit);

/* ---- version ---- */
const char *emlx_mlx_version(void);

/* ---- busy waiting: the callers' polls (emlx_poll.c) and the GPU workers'
 * spin (gpu_wait.cpp) share one policy ---- */
/* The host's online cores. */
long emlx_host_cores(void);
/* How many threads may busy-wait at once: one for each 8 cores, at least 1. */
int emlx_busy_wait_slots(void);
/* Environment variable name as a non-negative integer (microseconds for the
 * waits: 0..10 s), clamped to 0..10^7; dflt when it is unset or empty.
 * Also read for counts (EMLX_RUN_AHEAD, emlx_worker.c). */
long long emlx_env_us(const char *name, long long dflt);

#ifdef __cplusplus
}
#endif

#endif
