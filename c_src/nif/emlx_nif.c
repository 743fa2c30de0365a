/* The NIF entry: the functions EMLX.NIF exposes, and load.
 *
 * Every function here decodes and checks its terms on the calling
 * scheduler, then hands MLX work to the queue's worker thread and returns
 * a reference at once; the result arrives as a message {Ref, Result}. */
#include <dlfcn.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "emlx_array.h"
#include "emlx_codec.h"
#include "emlx_io.h"
#include "emlx_job.h"
#include "emlx_pointer.h"
#include "emlx_poll.h"
#include "emlx_programs.h"
#include "emlx_resources.h"
#include "emlx_worker.h"

static ERL_NIF_TERM *op_atoms;
static int op_count;

/* ---- queues ---- */

static ERL_NIF_TERM nif_queue_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  emlx_device dev;
  int run_ahead;
  if (!emlx_decode_device(env, argv[0], &dev)) return emlx_raise_arg(env, "device must be :cpu or :gpu");
  if (!enif_get_int(env, argv[1], &run_ahead) || run_ahead < -1)
    return emlx_raise_arg(env, "run_ahead must be a non-negative integer or -1 (the default)");
  emlx_queue *q = emlx_queue_start(dev, run_ahead);
  if (!q) return enif_make_tuple2(env, ATOM.error, enif_make_string(env, "out of memory", ERL_NIF_LATIN1));
  if (q->state != 1) {
    ERL_NIF_TERM msg = enif_make_string(env, q->error, ERL_NIF_LATIN1);
    emlx_queue_discard(q);
    return enif_make_tuple2(env, ATOM.error, msg);
  }
  emlx_queue_res *r = enif_alloc_resource(emlx_queue_type, sizeof(emlx_queue_res));
  if (!r) {
    emlx_queue_stop(q);
    return enif_make_tuple2(env, ATOM.error, enif_make_string(env, "out of memory", ERL_NIF_LATIN1));
  }
  r->q = q;
  ERL_NIF_TERM t = enif_make_resource(env, r);
  enif_release_resource(r);
  return enif_make_tuple2(env, ATOM.ok, t);
}

static ERL_NIF_TERM nif_queue_device(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  emlx_queue_res *qr;
  if (!emlx_get_queue(env, argv[0], &qr)) return emlx_raise_arg(env, "expected a command queue reference");
  return qr->q->device == EMLX_DEV_GPU ? ATOM.gpu : ATOM.cpu;
}

/* A barrier job: SYNC (the jobs before it, then the stream) or DRAIN (the jobs only). */
static ERL_NIF_TERM queue_barrier(ErlNifEnv *env, ERL_NIF_TERM queue, emlx_job_kind kind) {
  ERL_NIF_TERM raised;
  emlx_job *job = emlx_job_for_queue(env, queue, kind, &raised);
  if (!job) return raised;
  return emlx_submit_polled(env, job);
}

static ERL_NIF_TERM nif_queue_sync(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  return queue_barrier(env, argv[0], EMLX_JOB_SYNC);
}

static ERL_NIF_TERM nif_queue_drain(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  return queue_barrier(env, argv[0], EMLX_JOB_DRAIN);
}

static ERL_NIF_TERM nif_queue_idle(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  emlx_queue_res *qr;
  if (!emlx_get_queue(env, argv[0], &qr)) return emlx_raise_arg(env, "expected a command queue reference");
  return atomic_load_explicit(&qr->q->pending, memory_order_acquire) == 0 ? ATOM.true_ : ATOM.false_;
}

/* Backpressure: :ok, or a reference answered with {Ref, :ok} once the
 * queue's depth is low (see emlx_queue_wait_low). */
static ERL_NIF_TERM nif_queue_wait_low(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  emlx_queue_res *qr;
  if (!emlx_get_queue(env, argv[0], &qr)) return emlx_raise_arg(env, "expected a command queue reference");
  return emlx_queue_wait_low(env, qr->q);
}

/* ---- ops ---- */

/* Atoms are immediate terms, equal exactly when their values are: the op
 * atoms sorted by value make the name lookup a binary search. */
typedef struct {
  ERL_NIF_TERM atom;
  int index;
} op_by_atom;
static op_by_atom *ops_sorted;

static int cmp_op_by_atom(const void *a, const void *b) {
  ERL_NIF_TERM x = ((const op_by_atom *)a)->atom, y = ((const op_by_atom *)b)->atom;
  return x < y ? -1 : x > y;
}

int emlx_find_op(ERL_NIF_TERM name) {
  int lo = 0, hi = op_count - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (ops_sorted[mid].atom == name) return ops_sorted[mid].index;
    if (ops_sorted[mid].atom < name)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return -1;
}


static ERL_NIF_TERM nif_op(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  emlx_queue_res *qr;
  if (!emlx_get_queue(env, argv[0], &qr)) return emlx_raise_arg(env, "expected a command queue reference");
  int op = emlx_find_op(argv[1]);
  if (op < 0) return emlx_raise_arg(env, "unknown EMLX op %T", argv[1]);
  const char *sig = emlx_op_signature(op);
  int nsig = (int)strlen(sig);
  unsigned len;
  if (!enif_get_list_length(env, argv[2], &len) || (int)len != nsig)
    return emlx_raise_arg(env, "op %s expects %d arguments", emlx_op_name(op), nsig);

  emlx_job *job = emlx_job_new(EMLX_JOB_OP, qr);
  if (!job) return emlx_raise_arg(env, "out of memory");
  emlx_op_job *oj = &job->op;
  oj->index = op;
  if (!enif_is_identical(argv[3], ATOM.nil) && !emlx_decode_dtype(env, argv[3], &oj->out_dtype))
    return emlx_job_fail(env, job, "the output type is not one MLX supports");

  ERL_NIF_TERM head, tail = argv[2];
  char err[256];
  for (int i = 0; i < nsig; i++) {
    enif_get_list_cell(env, tail, &head, &tail);
    if (!emlx_job_decode_arg(env, head, sig[i], job, &oj->args[i], err, sizeof err)) {
      char msg[400];
      snprintf(msg, sizeof msg, "%s, argument %d: %s", emlx_op_name(op), i + 1, err);
      return emlx_job_fail(env, job, msg);
    }
  }
  oj->nargs = nsig;

  /* The results exist now, pending; the worker fills them in queue order. */
  int nouts = emlx_op_outputs(op);
  ERL_NIF_TERM terms[EMLX_MAX_OUTS];
  if (!emlx_job_pending_results(env, job, oj->results, &oj->nresults, terms, nouts))
    return emlx_job_fail(env, job, "out of memory");
  return emlx_job_post_pending(env, job,
                               nouts == 1 ? terms[0] : enif_make_list_from_array(env, terms, (unsigned)nouts));
}

static ERL_NIF_TERM nif_op_list(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  (void)argv;
  ERL_NIF_TERM list = enif_make_list(env, 0);
  for (int i = op_count - 1; i >= 0; i--) {
    ERL_NIF_TERM sig = enif_make_string(env, emlx_op_signature(i), ERL_NIF_LATIN1);
    list = enif_make_list_cell(env, enif_make_tuple2(env, op_atoms[i], sig), list);
  }
  return list;
}

/* ---- data in and out ---- */

static ERL_NIF_TERM nif_to_binary(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  ERL_NIF_TERM raised;
  emlx_job *job = emlx_job_for_queue(env, argv[0], EMLX_JOB_TO_BINARY, &raised);
  if (!job) return raised;
  ErlNifUInt64 limit;
  if (!enif_get_uint64(env, argv[2], &limit)) return emlx_job_fail(env, job, "limit must be a non-negative integer");
  char err[256];
  if (!emlx_job_take_array(env, argv[1], job, &job->to_binary.arr, err, sizeof err)) return emlx_job_fail(env, job, err);
  job->to_binary.limit = (size_t)limit;
  return emlx_submit_polled(env, job);
}

/* An eval job (EVAL or ASYNC_EVAL) on the arrays of argv[1]; NULL after
 * raising the error in *raised. */
static emlx_job *eval_job(ErlNifEnv *env, const ERL_NIF_TERM argv[], emlx_job_kind kind, ERL_NIF_TERM *raised) {
  emlx_job *job = emlx_job_for_queue(env, argv[0], kind, raised);
  if (!job) return NULL;
  char err[256];
  if (!emlx_job_take_arrays(env, argv[1], job, 0, &job->eval.inputs, &job->eval.ninputs, err, sizeof err)) {
    *raised = emlx_job_fail(env, job, err);
    return NULL;
  }
  return job;
}

/* The list t without the arrays whose op already failed (t itself when it
 * is no proper list: eval_job then raises). */
static ERL_NIF_TERM without_failed(ErlNifEnv *env, ERL_NIF_TERM t) {
  ERL_NIF_TERM head, tail = t, kept = enif_make_list(env, 0);
  while (enif_get_list_cell(env, tail, &head, &tail))
    if (!emlx_array_failed(env, head)) kept = enif_make_list_cell(env, head, kept);
  return enif_is_empty_list(env, tail) ? kept : t; /* (kept is reversed: no matter to an eval) */
}

/* async_eval(queue, arrays): posts mx::async_eval of the arrays; returns :ok
 * at once. An array whose op has already failed is left out: its error
 * comes at its read, as when the op fails after this call. */
static ERL_NIF_TERM nif_async_eval(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  ERL_NIF_TERM raised, args[2] = {argv[0], without_failed(env, argv[1])};
  emlx_job *job = eval_job(env, args, EMLX_JOB_ASYNC_EVAL, &raised);
  if (!job) return raised;
  emlx_queue_post(job->qres->q, job);
  return ATOM.ok;
}

static ERL_NIF_TERM nif_eval(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  ERL_NIF_TERM raised;
  emlx_job *job = eval_job(env, argv, EMLX_JOB_EVAL, &raised);
  if (!job) return raised;
  return emlx_submit_polled(env, job);
}

/* ---- array metadata (read on the scheduler, under the array's lock) ---- */

/* What array_meta reads of an array. */
typedef struct {
  int strides, nd, dt;
  int64_t v[EMLX_MAX_DIMS];
} meta_read;

static void read_meta(const emlx_arr *a, void *ctx) {
  meta_read *m = ctx;
  m->nd = emlx_arr_ndim(a);
  if (m->nd > EMLX_MAX_DIMS) m->nd = EMLX_MAX_DIMS;
  if (m->strides)
    emlx_arr_strides(a, m->v);
  else
    emlx_arr_shape(a, m->v);
  m->dt = emlx_arr_dtype(a);
}

/* array_info ({shape, type, queue}) and array_strides. A pending array
 * answers {:pending, queue}: the caller waits on the queue and asks again.
 * (These reads, here and below, take no handle of their own: see
 * emlx_peek_array.) */
static ERL_NIF_TERM array_meta(ErlNifEnv *env, ERL_NIF_TERM t, int strides) {
  char err[256];
  emlx_array_res *res;
  int state, kind = EMLX_ERR_ARG;
  meta_read m = {.strides = strides};
  int read = emlx_peek_array(env, t, read_meta, &m, &res, &state, &kind, err, sizeof err);
  if (!read && state == EMLX_ARR_PENDING) return enif_make_tuple2(env, ATOM.pending, enif_make_resource(env, res->owner));
  if (!read) return emlx_raise_kind(env, kind, err);
  if (strides) return emlx_encode_dims(env, m.v, m.nd);
  ERL_NIF_TERM owner = enif_make_resource(env, res->owner);
  return enif_make_tuple3(env, emlx_encode_dims(env, m.v, m.nd), emlx_encode_dtype(env, m.dt), owner);
}

static ERL_NIF_TERM nif_array_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  return array_meta(env, argv[0], 0);
}

static ERL_NIF_TERM nif_array_strides(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  return array_meta(env, argv[0], 1);
}

typedef struct {
  int (*pred)(const emlx_arr *);
  int yes;
} test_read;

static void read_test(const emlx_arr *a, void *ctx) {
  test_read *r = ctx;
  r->yes = r->pred(a);
}

/* pred(array) of an array term: false for a pending, failed or
 * deallocated array. */
static ERL_NIF_TERM array_test(ErlNifEnv *env, ERL_NIF_TERM term, int (*pred)(const emlx_arr *)) {
  char err[256];
  emlx_array_res *res;
  int state, kind = EMLX_ERR_ARG;
  test_read r = {.pred = pred, .yes = 0};
  if (!emlx_peek_array(env, term, read_test, &r, &res, &state, &kind, err, sizeof err)) return ATOM.false_;
  return r.yes ? ATOM.true_ : ATOM.false_;
}

/* Whether the array is computed (emlx_arr_is_available, the check a job
 * makes of an array from another queue): such an array needs no evaluation
 * on its own queue first. A pending, failed or deallocated array, or one
 * started by async_eval and not yet waited for, answers false. */
static ERL_NIF_TERM nif_array_available(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  return array_test(env, argv[0], emlx_arr_is_available);
}

/* Whether an array's computation has started or is done (run-ahead, async_eval). */
static ERL_NIF_TERM nif_array_scheduled(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  return array_test(env, argv[0], emlx_arr_is_scheduled);
}

typedef struct {
  int max, any_size, n;
  int64_t *vals;
} ints_read;

static void read_ints(const emlx_arr *a, void *ctx) {
  ints_read *r = ctx;
  r->n = emlx_arr_host_ints(a, r->max, r->any_size, r->vals);
}

/* host_ints(array, max): the values of an integer array that is already
 * computed and readable on the host as it stands (emlx_arr_host_ints), as
 * a list; nil otherwise (pending, lazy, too large, device memory). Never
 * waits: for checks of data the host has, such as literal indices. */
static ERL_NIF_TERM nif_host_ints(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  char err[256];
  emlx_array_res *res;
  int state, kind = EMLX_ERR_ARG, max;
  if (!enif_get_int(env, argv[1], &max) || max < 0 || max > 65536) return emlx_raise_arg(env, "expected a count up to 65536");
  if (!enif_get_resource(env, argv[0], emlx_array_type, (void **)&res)) return ATOM.nil;
  ints_read r = {.max = max, .any_size = res->owner && res->owner->q->device == EMLX_DEV_CPU, .n = -1};
  r.vals = max ? enif_alloc(sizeof(int64_t) * (size_t)max) : NULL;
  if (max && !r.vals) return ATOM.nil;
  emlx_peek_res(res, read_ints, &r, &state, &kind, err, sizeof err);
  ERL_NIF_TERM list = ATOM.nil;
  if (r.n >= 0) {
    list = enif_make_list(env, 0);
    for (int i = r.n - 1; i >= 0; i--) list = enif_make_list_cell(env, enif_make_int64(env, r.vals[i]), list);
  }
  if (r.vals) enif_free(r.vals);
  return list;
}

static ERL_NIF_TERM nif_deallocate(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  emlx_array_res *res;
  if (!enif_get_resource(env, argv[0], emlx_array_type, (void **)&res))
    return emlx_raise_arg(env, "expected an EMLX array reference");
  int marked_pending;
  emlx_arr *a = emlx_array_detach(res, &marked_pending);
  if (marked_pending) return ATOM.ok;
  if (!a) return ATOM.already_deallocated;
  emlx_queue_free_later(res->owner->q, a, NULL);
  return ATOM.ok;
}

/* ---- devices and memory ---- */

/* A barrier behind the resource destructors this scheduler has queued (see
 * emlx_barrier_res): returns ref; {ref, :swept} follows once they have run. */
static ERL_NIF_TERM nif_sweep_barrier(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc, (void)argv;
  emlx_barrier_res *b = enif_alloc_resource(emlx_barrier_type, sizeof(emlx_barrier_res));
  if (!b) return enif_raise_exception(env, enif_make_atom(env, "out_of_memory"));
  b->env = enif_alloc_env();
  if (!b->env) {
    enif_release_resource(b);
    return enif_raise_exception(env, enif_make_atom(env, "out_of_memory"));
  }
  enif_self(env, &b->pid);
  ERL_NIF_TERM ref = enif_make_ref(env);
  b->ref = enif_make_copy(b->env, ref);
  enif_release_resource(b);
  return ref;
}

static ERL_NIF_TERM nif_device_available(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  emlx_device dev;
  if (!emlx_decode_device(env, argv[0], &dev)) return emlx_raise_arg(env, "device must be :cpu or :gpu");
  return emlx_device_available(dev) ? ATOM.true_ : ATOM.false_;
}

static ERL_NIF_TERM nif_memory_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  (void)argv;
  size_t active, peak, cache;
  emlx_memory_info(&active, &peak, &cache);
  ERL_NIF_TERM keys[3] = {ATOM.active_memory, ATOM.peak_memory, ATOM.cache_memory};
  ERL_NIF_TERM vals[3] = {enif_make_uint64(env, active), enif_make_uint64(env, peak), enif_make_uint64(env, cache)};
  ERL_NIF_TERM map;
  enif_make_map_from_arrays(env, keys, vals, 3, &map);
  return map;
}

static ERL_NIF_TERM nif_reset_peak_memory(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)env, (void)argc, (void)argv;
  emlx_reset_peak_memory();
  return ATOM.ok;
}

static ERL_NIF_TERM nif_clear_cache(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)env, (void)argc, (void)argv;
  emlx_clear_cache();
  return ATOM.ok;
}

/* Sets a limit and returns the previous one. */
static ERL_NIF_TERM set_limit(ErlNifEnv *env, ERL_NIF_TERM t, size_t (*set)(size_t)) {
  ErlNifUInt64 v;
  if (!enif_get_uint64(env, t, &v)) return emlx_raise_arg(env, "limit must be a non-negative integer");
  return enif_make_uint64(env, set((size_t)v));
}

static ERL_NIF_TERM nif_set_cache_limit(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  return set_limit(env, argv[0], emlx_set_cache_limit);
}

static ERL_NIF_TERM nif_set_memory_limit(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  return set_limit(env, argv[0], emlx_set_memory_limit);
}

static ERL_NIF_TERM nif_mlx_version(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  (void)argv;
  return enif_make_string(env, emlx_mlx_version(), ERL_NIF_LATIN1);
}

/* ---- load ---- */

/* The BEAM ignores SIGCHLD, so children are reaped automatically and
 * popen()/pclose() (which MLX's CPU JIT uses to run the C++ compiler for
 * fused kernels) cannot collect their exit status: MLX then finds no
 * compiler and silently skips kernel fusion. The BEAM itself starts OS
 * processes through its separate erl_child_setup helper, so restoring the
 * default disposition here is safe. EMLX_KEEP_SIGCHLD=1 opts out. */
static void restore_sigchld(void) {
  const char *keep = getenv("EMLX_KEEP_SIGCHLD");
  if (keep && keep[0] == '1') return;
  struct sigaction current;
  if (sigaction(SIGCHLD, NULL, &current) == 0 && current.sa_handler == SIG_IGN) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGCHLD, &dfl, NULL);
  }
}

/* MLX's CPU buffers come from malloc, on the worker thread (a glibc thread
 * arena). The BEAM sets glibc's trim threshold and top pad at start (erl
 * +MYtt, +MYtp: 128 KiB and 0), which also freezes glibc's mmap threshold at
 * 128 KiB: every array buffer above that was a fresh mmap, page-faulted in
 * on first write and unmapped on free (a 2048x2048 f32 softmax took 4,096
 * page faults an iteration; Python MLX, with glibc's adaptive threshold,
 * none). Set what glibc would adapt to: buffers up to 32 MiB (glibc's
 * ceiling for the mmap threshold) come from the heap, and up to 64 MiB of
 * free heap top is kept. The top pad keeps a thread arena's extra heaps
 * (64 MiB each) from being unmapped as soon as they are empty, which would
 * fault them in again at the next evaluation. EMLX_KEEP_MALLOC=1 opts out. */
static void tune_malloc(void) {
#if defined(__GLIBC__)
  const char *keep = getenv("EMLX_KEEP_MALLOC");
  if (keep && keep[0] == '1') return;
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
  mallopt(M_TOP_PAD, 64 * 1024 * 1024);
#endif
}

/*
 * MLX's CUDA backend reads MLX_ENABLE_TF32 once, at its first f32 matmul or
 * conv. EMLX.NIF passes the value it wants ("0" for full f32, Nx's meaning;
 * "1" for TF32) as the load info; a value already in the environment wins.
 */
static void set_tf32(ErlNifEnv *env, ERL_NIF_TERM info) {
  char value[4];
  if (enif_get_string(env, info, value, sizeof value, ERL_NIF_LATIN1) > 0 && getenv("MLX_ENABLE_TF32") == NULL)
    setenv("MLX_ENABLE_TF32", value, 0);
}

/* At the VM's exit (erlang:halt included), before the libraries' own
 * destructors: let every queue finish what its stream is computing (see
 * emlx_queues_quiesce), at most 10 s. Then an exception that escapes an
 * MLX thread while the libraries tear down ends the process with the exit's
 * own status, not an abort (emlx_exit_begin): with Debian 12's OpenBLAS on
 * an H200 host the VM aborted at exit in most runs of vm_exit_test with
 * "cudaSetDevice(device_) failed: driver shutting down". */
static void quiesce_at_exit(int status, void *arg) {
  (void)arg;
  emlx_queues_quiesce(10000);
  emlx_exit_begin(status);
}

/* The library stays mapped for the process's life (RTLD_NODELETE): its
 * worker threads and MLX's run its code until the exit, and on_exit (unlike
 * atexit) would keep calling quiesce_at_exit after a dlclose. */
static void pin_library(void) {
  Dl_info self;
  if (dladdr((void *)pin_library, &self) && self.dli_fname)
    (void)dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static int load(ErlNifEnv *env, void **priv, ERL_NIF_TERM info) {
  (void)priv;
  pin_library();
  emlx_statics_init(); /* before on_exit: see emlx_shim.h */
  if (on_exit(quiesce_at_exit, NULL) != 0) return 1;
  emlx_exit_guard_install();
  set_tf32(env, info);
  if (emlx_resources_load(env) != 0) return 1;
  emlx_codec_load(env);
  if (emlx_poll_load(env) != 0) return 1;
  op_count = emlx_op_count();
  op_atoms = enif_alloc(sizeof(ERL_NIF_TERM) * (size_t)op_count);
  if (!op_atoms) return 1;
  for (int i = 0; i < op_count; i++) op_atoms[i] = enif_make_atom(env, emlx_op_name(i));
  ops_sorted = enif_alloc(sizeof(op_by_atom) * (size_t)op_count);
  if (!ops_sorted) return 1;
  for (int i = 0; i < op_count; i++) ops_sorted[i] = (op_by_atom){op_atoms[i], i};
  qsort(ops_sorted, (size_t)op_count, sizeof(op_by_atom), cmp_op_by_atom);
  restore_sigchld();
  tune_malloc();
  return 0;
}

static ErlNifFunc funcs[] = {
    {"queue_new", 2, nif_queue_new, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"queue_device", 1, nif_queue_device, 0},
    {"queue_sync", 1, nif_queue_sync, 0},
    {"queue_drain", 1, nif_queue_drain, 0},
    {"queue_idle", 1, nif_queue_idle, 0},
    {"queue_wait_low", 1, nif_queue_wait_low, 0},
    {"op", 4, nif_op, 0},
    {"op_list", 0, nif_op_list, 0},
    {"from_binary", 4, emlx_nif_from_binary, 0},
    {"to_binary", 3, nif_to_binary, 0},
    {"eval", 2, nif_eval, 0},
    {"async_eval", 2, nif_async_eval, 0},
    {"program_new", 4, emlx_nif_program_new, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"program_run", 4, emlx_nif_program_run, 0},
    {"program_post", 4, emlx_nif_program_post, 0},
    {"to_pointer", 4, emlx_nif_to_pointer, 0},
    {"from_pointer", 4, emlx_nif_from_pointer, 0},
    {"shm_unlink", 1, emlx_nif_shm_unlink, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"load_safetensors", 2, emlx_nif_load_safetensors, 0},
    {"save_safetensors", 4, emlx_nif_save_safetensors, 0},
    {"array_info", 1, nif_array_info, 0},
    {"array_strides", 1, nif_array_strides, 0},
    {"array_available", 1, nif_array_available, 0},
    {"array_scheduled", 1, nif_array_scheduled, 0},
    {"host_ints", 2, nif_host_ints, 0},
    {"deallocate", 1, nif_deallocate, 0},
    {"device_available", 1, nif_device_available, 0},
    {"memory_info", 0, nif_memory_info, 0},
    {"sweep_barrier", 0, nif_sweep_barrier, 0},
    {"reset_peak_memory", 0, nif_reset_peak_memory, 0},
    {"clear_cache", 0, nif_clear_cache, 0},
    {"set_cache_limit", 1, nif_set_cache_limit, 0},
    {"set_memory_limit", 1, nif_set_memory_limit, 0},
    {"mlx_version", 0, nif_mlx_version, 0},
};

ERL_NIF_INIT(Elixir.EMLX.NIF, funcs, load, NULL, NULL, NULL)
