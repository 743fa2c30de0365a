/* Jobs: their life, and the decoding of the arrays they read. */
#include "emlx_job.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emlx_codec.h"
#include "emlx_worker.h"

/* Spent jobs wait here for reuse. A job is made on a scheduler thread and
 * usually freed on a worker: through malloc, each free takes the lock of
 * the scheduler thread's arena, which that thread's own mallocs contend for
 * (measured with perf in a dispatch-bound loop: futex waits on glibc's
 * arena lock on both threads). The list's lock is held for a pointer swap. */
#define EMLX_SPARE_JOBS 256
static atomic_flag spare_lock = ATOMIC_FLAG_INIT;
static emlx_job *spare[EMLX_SPARE_JOBS];
static int nspare;

static void spare_lock_take(void) {
  while (atomic_flag_test_and_set_explicit(&spare_lock, memory_order_acquire)) {
  }
}

static void spare_lock_give(void) { atomic_flag_clear_explicit(&spare_lock, memory_order_release); }

static emlx_job *job_alloc(void) {
  emlx_job *job = NULL;
  spare_lock_take();
  if (nspare > 0) job = spare[--nspare];
  spare_lock_give();
  if (job) return job;
  job = malloc(sizeof(emlx_job));
  if (!job) return NULL;
  /* the buffers a reused job carries over */
  job->held = NULL;
  job->cap_held = 0;
  job->fixups = NULL;
  job->cap_fixups = 0;
  return job;
}

static void job_release(emlx_job *job) {
  spare_lock_take();
  int kept = nspare < EMLX_SPARE_JOBS;
  if (kept) spare[nspare++] = job;
  spare_lock_give();
  if (kept) return;
  free(job->held);
  free(job->fixups);
  free(job);
}

emlx_job *emlx_job_new(emlx_job_kind kind, emlx_queue_res *qres) {
  emlx_job *job = job_alloc();
  if (!job) return NULL;
  /* The job is written here and read on the worker's core: an op clears
   * only its header and the op's small fields (its arguments are written as
   * they are decoded, and read up to nargs), not the whole argument array.
   * A reused job keeps its held and fixups buffers. */
  emlx_arr **held = job->held;
  emlx_fixup *fixups = job->fixups;
  int cap_held = job->cap_held, cap_fixups = job->cap_fixups;
  if (kind == EMLX_JOB_OP) {
    memset(job, 0, offsetof(emlx_job, boxes));
    job->nboxes = 0;
    job->op.index = 0;
    job->op.out_dtype = -1;
    job->op.nargs = 0;
    job->op.nresults = 0;
  } else {
    memset(job, 0, sizeof *job);
  }
  job->held = held;
  job->cap_held = cap_held;
  job->fixups = fixups;
  job->cap_fixups = cap_fixups;
  job->kind = kind;
  job->error_kind = EMLX_ERR_ARG;
  /* Ops never reply (their results are arrays filled in place), nor does an
   * async eval (its errors surface at the read that waits): no env. */
  if (kind != EMLX_JOB_FREE && kind != EMLX_JOB_STOP && kind != EMLX_JOB_OP && kind != EMLX_JOB_ASYNC_EVAL &&
      kind != EMLX_JOB_QUIESCE) {
    job->env = enif_alloc_env();
    if (!job->env) {
      job_release(job);
      return NULL;
    }
  }
  if (qres) {
    job->qres = qres;
    enif_keep_resource(qres);
  }
  return job;
}

emlx_job *emlx_job_for_queue(ErlNifEnv *env, ERL_NIF_TERM t, emlx_job_kind kind, ERL_NIF_TERM *raised) {
  emlx_queue_res *qr;
  if (!emlx_get_queue(env, t, &qr)) {
    *raised = emlx_raise_arg(env, "expected a command queue reference");
    return NULL;
  }
  emlx_job *job = emlx_job_new(kind, qr);
  if (!job) *raised = emlx_raise_arg(env, "out of memory");
  return job;
}

/* Storage in the job for one more retained handle, or NULL when it is full. */
static void *box(emlx_job *job) { return job->nboxes < EMLX_JOB_BOXES ? job->boxes[job->nboxes].bytes : NULL; }

static int boxed(const emlx_job *job, const emlx_arr *a) {
  const unsigned char *p = (const unsigned char *)a;
  return p >= job->boxes[0].bytes && p < job->boxes[0].bytes + sizeof job->boxes;
}

static void drop(emlx_job *job, emlx_arr *a) {
  if (boxed(job, a))
    emlx_arr_drop_at(a);
  else
    emlx_arr_free(a);
}

void emlx_job_release_arrays(emlx_job *job) {
  for (int i = job->nresolved; i < job->nfixups; i++) emlx_array_drop_reader(job->fixups[i].res);
  job->nresolved = job->nfixups;
  for (int i = 0; i < job->nheld; i++) drop(job, job->held[i]);
  job->nheld = 0;
}

void emlx_job_free(emlx_job *job) {
  emlx_job_release_arrays(job);
  for (int i = 0; i < job->nfixups; i++) enif_release_resource(job->fixups[i].res);
  emlx_arena_free(&job->arena);
  switch (job->kind) {
    case EMLX_JOB_OP:
      for (int i = 0; i < job->op.nresults; i++) enif_release_resource(job->op.results[i]);
      break;
    case EMLX_JOB_FROM_BINARY:
      if (job->from_binary.nresult) enif_release_resource(job->from_binary.result);
      break;
    case EMLX_JOB_PROGRAM:
      if (job->program.res) enif_release_resource(job->program.res);
      for (int i = 0; i < job->program.nresults; i++) enif_release_resource(job->program.results[i]);
      if (job->program.results) enif_free(job->program.results);
      break;
    case EMLX_JOB_TO_POINTER:
      if (job->to_pointer.res) enif_release_resource(job->to_pointer.res);
      break;
    case EMLX_JOB_FREE:
      if (job->free.arr) emlx_arr_free(job->free.arr);
      if (job->free.compiled) emlx_compiled_free(job->free.compiled);
      break;
    default:
      break;
  }
  if (job->env) enif_free_env(job->env);
  if (job->qres) enif_release_resource(job->qres);
  job_release(job);
}

ERL_NIF_TERM emlx_job_submit(ErlNifEnv *env, emlx_job *job) {
  ERL_NIF_TERM ref = enif_make_ref(env);
  job->ref = enif_make_copy(job->env, ref);
  if (!enif_self(env, &job->pid)) {
    emlx_job_free(job);
    return emlx_raise_arg(env, "EMLX calls must come from a process");
  }
  emlx_queue_post(job->qres->q, job);
  return ref;
}

int emlx_job_pending_results(ErlNifEnv *env, emlx_job *job, emlx_array_res **res, int *nres, ERL_NIF_TERM *terms,
                             int n) {
  for (int i = 0; i < n; i++) {
    terms[i] = emlx_make_pending(env, job->qres, &res[i]);
    if (!terms[i]) return 0;
    *nres = i + 1;
  }
  return 1;
}

ERL_NIF_TERM emlx_job_post_pending(ErlNifEnv *env, emlx_job *job, ERL_NIF_TERM results) {
  if (!enif_self(env, &job->pid)) return emlx_job_fail(env, job, "EMLX calls must come from a process");
  emlx_queue *q = job->qres->q; /* (the job is the worker's once posted) */
  emlx_queue_post(q, job);
  if (atomic_load_explicit(&q->pending, memory_order_relaxed) > EMLX_BACKPRESSURE)
    return enif_make_tuple2(env, ATOM.wait, results);
  return results;
}

ERL_NIF_TERM emlx_job_fail(ErlNifEnv *env, emlx_job *job, const char *msg) {
  int kind = job->error_kind;
  emlx_job_free(job);
  return emlx_raise_kind(env, kind, msg);
}

/* ---- decoding, on the scheduler ---- */

static int hold(emlx_job *job, emlx_arr *a) {
  if (boxed(job, a)) job->nboxes++;
  if (job->nheld == job->cap_held) {
    int cap = job->cap_held ? job->cap_held * 2 : 8;
    emlx_arr **n = realloc(job->held, sizeof(emlx_arr *) * (size_t)cap);
    if (!n) return 0;
    job->held = n;
    job->cap_held = cap;
  }
  job->held[job->nheld++] = a;
  return 1;
}

static int add_fixup(emlx_job *job, emlx_array_res *res, emlx_arr **slot) {
  if (job->nfixups == job->cap_fixups) {
    int cap = job->cap_fixups ? job->cap_fixups * 2 : 4;
    emlx_fixup *n = realloc(job->fixups, sizeof(emlx_fixup) * (size_t)cap);
    if (!n) return 0;
    job->fixups = n;
    job->cap_fixups = cap;
  }
  enif_keep_resource(res);
  emlx_array_add_reader(res);
  job->fixups[job->nfixups].res = res;
  job->fixups[job->nfixups].slot = slot;
  job->nfixups++;
  return 1;
}

int emlx_job_take_array(ErlNifEnv *env, ERL_NIF_TERM t, emlx_job *job, emlx_arr **slot, char *err, size_t errlen) {
  emlx_array_res *res;
  int state;
  *slot = NULL;
  emlx_arr *a = emlx_take_array(env, t, box(job), &res, &state, &job->error_kind, err, errlen);
  if (!a) {
    if (state != EMLX_ARR_PENDING) return 0;
    if (res->owner->q != job->qres->q) {
      emlx_set_err(err, errlen, "a tensor from another command queue must be evaluated before use on this queue");
      return 0;
    }
    if (!add_fixup(job, res, slot)) {
      emlx_set_err(err, errlen, "out of memory");
      return 0;
    }
    return 1;
  }
  if (!hold(job, a)) {
    drop(job, a);
    emlx_set_err(err, errlen, "out of memory");
    return 0;
  }
  *slot = a;
  if (res->owner->q != job->qres->q && !emlx_arr_is_available(a)) {
    emlx_set_err(err, errlen, "a tensor from another command queue must be evaluated before use on this queue");
    return 0;
  }
  return 1;
}

int emlx_job_take_arrays(ErlNifEnv *env, ERL_NIF_TERM t, emlx_job *job, int nonempty, emlx_arr ***v, int *n,
                         char *err, size_t errlen) {
  unsigned len;
  if (!enif_get_list_length(env, t, &len) || (nonempty && len == 0)) {
    snprintf(err, errlen, nonempty ? "expected a non-empty list of arrays" : "expected a list of arrays");
    return 0;
  }
  emlx_arr **a = emlx_arena_alloc(&job->arena, sizeof(emlx_arr *) * (len ? len : 1));
  if (!a) {
    emlx_set_err(err, errlen, "out of memory");
    return 0;
  }
  ERL_NIF_TERM head, tail = t;
  for (unsigned i = 0; i < len; i++) {
    enif_get_list_cell(env, tail, &head, &tail);
    if (!emlx_job_take_array(env, head, job, &a[i], err, errlen)) return 0;
  }
  *v = a;
  *n = (int)len;
  return 1;
}

int emlx_job_decode_arg(ErlNifEnv *env, ERL_NIF_TERM t, char kind, emlx_job *job, emlx_arg *out, char *err,
                        size_t errlen) {
  out->kind = kind;
  switch (kind) {
    case EMLX_ARG_ARR:
      return emlx_job_take_array(env, t, job, &out->u.arr, err, errlen);
    case EMLX_ARG_ARRS:
      return emlx_job_take_arrays(env, t, job, 1, &out->u.arrs.v, &out->u.arrs.n, err, errlen);
    default:
      return emlx_decode_value(env, t, kind, &job->arena, out, err, errlen);
  }
}

/* ---- on the worker ---- */

int emlx_job_resolve(emlx_job *job, int *kind, char *msg, size_t msglen) {
  for (int i = 0; i < job->nfixups; i++) {
    job->nresolved = i + 1;
    emlx_arr *copy = emlx_array_resolve(job->fixups[i].res, box(job), kind, msg, msglen);
    if (!copy) return 0;
    if (!hold(job, copy)) {
      drop(job, copy);
      *kind = EMLX_ERR_MLX;
      emlx_set_err(msg, msglen, "out of memory");
      return 0;
    }
    *job->fixups[i].slot = copy;
  }
  return 1;
}
