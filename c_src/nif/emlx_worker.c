/* Worker threads and their job queues.
 *
 * Each command queue owns one OS thread, and the MLX stream is created on
 * that thread: MLX streams and their encoders are thread-local, so every
 * MLX call for the queue runs here. Jobs are FIFO; replies go back to the
 * calling process with enif_send as {Ref, Result}. */
#include "emlx_worker.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "emlx_codec.h"
#include "emlx_io.h"
#include "emlx_pointer.h"

#define WORKER_STACK_BYTES (64u * 1024u * 1024u)
#define WORKER_SPIN_ROUNDS 200

void emlx_queue_post(emlx_queue *q, emlx_job *job) {
  job->next = NULL;
  pthread_mutex_lock(&q->mu);
  if (q->tail)
    q->tail->next = job;
  else
    q->head = job;
  q->tail = job;
  atomic_fetch_add_explicit(&q->pending, 1, memory_order_acq_rel);
  if (q->sleeping) pthread_cond_signal(&q->cv);
  pthread_mutex_unlock(&q->mu);
}

/* ---- backpressure ----
 * A waiter registers, then reads the depth; the worker lowers the depth,
 * then reads the waiter count (both sequentially consistent): one of the
 * two sees the other, so no wake-up is lost. */

static void bp_notify(emlx_queue *q) {
  pthread_mutex_lock(&q->bp_mu);
  for (int i = 0; i < atomic_load(&q->bp_n); i++) {
    emlx_bp_waiter *w = &q->bp[i];
    enif_send(NULL, &w->pid, w->env, enif_make_tuple2(w->env, w->ref, ATOM.ok));
    enif_free_env(w->env);
  }
  atomic_store(&q->bp_n, 0);
  pthread_mutex_unlock(&q->bp_mu);
}

/* A job is done: counted off, and waiters told once the depth is low. */
static void job_done(emlx_queue *q) {
  int left = atomic_fetch_sub(&q->pending, 1) - 1;
  if (atomic_load(&q->bp_n) && left <= q->bp_low) bp_notify(q);
}

ERL_NIF_TERM emlx_queue_wait_low(ErlNifEnv *env, emlx_queue *q) {
  if (atomic_load(&q->pending) <= q->bp_low) return ATOM.ok;
  emlx_bp_waiter w = {.env = enif_alloc_env()};
  if (!w.env || !enif_self(env, &w.pid)) {
    if (w.env) enif_free_env(w.env);
    return enif_raise_exception(env, enif_make_atom(env, "out_of_memory"));
  }
  w.ref = enif_make_ref(w.env);
  ERL_NIF_TERM ref = enif_make_copy(env, w.ref);
  pthread_mutex_lock(&q->bp_mu);
  int n = atomic_load(&q->bp_n);
  if (n == q->bp_cap) {
    int cap = q->bp_cap ? q->bp_cap * 2 : 4;
    emlx_bp_waiter *grown = enif_realloc(q->bp, sizeof *grown * (size_t)cap);
    if (!grown) {
      pthread_mutex_unlock(&q->bp_mu);
      enif_free_env(w.env);
      return enif_raise_exception(env, enif_make_atom(env, "out_of_memory"));
    }
    q->bp = grown;
    q->bp_cap = cap;
  }
  q->bp[n] = w;
  atomic_store(&q->bp_n, n + 1);
  if (atomic_load(&q->pending) <= q->bp_low) {
    /* the worker got there first: no message will come for this one */
    atomic_store(&q->bp_n, n);
    pthread_mutex_unlock(&q->bp_mu);
    enif_free_env(w.env);
    return ATOM.ok;
  }
  pthread_mutex_unlock(&q->bp_mu);
  return ref;
}

void emlx_queue_stop(emlx_queue *q) {
  emlx_job *stop = emlx_job_new(EMLX_JOB_STOP, NULL);
  if (stop) emlx_queue_post(q, stop);
}

void emlx_queue_free_later(emlx_queue *q, emlx_arr *a, emlx_compiled *c) {
  emlx_job *job = emlx_job_new(EMLX_JOB_FREE, NULL);
  if (!job) {
    /* No memory for a job: free here rather than leak. */
    if (a) emlx_arr_free(a);
    if (c) emlx_compiled_free(c);
    return;
  }
  job->free.arr = a;
  job->free.compiled = c;
  emlx_queue_post(q, job);
}

/* ---- replies ---- */

/* Every job with a reply env replies exactly once. A polled job hands its
 * reply to the polling caller, who frees the job; if the caller stopped
 * polling, the reply goes as a message and the job is freed here (the
 * worker loop frees only unpolled jobs). */
static void reply(emlx_job *job, ERL_NIF_TERM result) {
  int polled = atomic_load_explicit(&job->poll, memory_order_relaxed) != EMLX_POLL_NONE;
  if (polled) {
    emlx_job_release_arrays(job); /* (here, on the worker: the caller frees the job) */
    job->poll_result = result;
    int expected = EMLX_POLL_WAITING;
    if (atomic_compare_exchange_strong_explicit(&job->poll, &expected, EMLX_POLL_DONE, memory_order_acq_rel,
                                                memory_order_acquire))
      return; /* the job belongs to the caller now: touch nothing */
  }
  ERL_NIF_TERM msg = enif_make_tuple2(job->env, job->ref, result);
  enif_send(NULL, &job->pid, job->env, msg);
  enif_clear_env(job->env);
  if (polled) emlx_job_free(job);
}

void emlx_reply_ok(emlx_job *job, ERL_NIF_TERM value) { reply(job, enif_make_tuple2(job->env, ATOM.ok, value)); }

ERL_NIF_TERM emlx_reply_string(ErlNifEnv *env, const char *s) {
  ERL_NIF_TERM t;
  return emlx_encode_string(env, s, &t) ? t : enif_make_atom(env, "out_of_memory");
}

/* {:error, :argument | :mlx, message} */
void emlx_reply_failure(emlx_job *job, int kind, const char *msg) {
  ERL_NIF_TERM k = kind == EMLX_ERR_ARG ? ATOM.argument : ATOM.mlx;
  reply(job, enif_make_tuple3(job->env, ATOM.error, k, emlx_reply_string(job->env, msg)));
}

/* The error of the shim call that returned st. */
void emlx_reply_error(emlx_job *job, emlx_status st) { emlx_reply_failure(job, st, emlx_last_error()); }

void emlx_reply_oom(emlx_job *job) { emlx_reply_failure(job, EMLX_ERR_MLX, "out of memory"); }

/* :ok, or the error of the shim call that returned st. */
void emlx_reply_status(emlx_job *job, emlx_status st) {
  if (st != EMLX_OK)
    emlx_reply_error(job, st);
  else
    reply(job, ATOM.ok);
}

/* Resolves the job's pending inputs; on failure replies (or fails the
 * results of an op) and returns 0. */
static int resolve(emlx_job *job) {
  int kind;
  char msg[512];
  if (emlx_job_resolve(job, &kind, msg, sizeof msg)) return 1;
  if (job->kind == EMLX_JOB_OP) {
    for (int i = 0; i < job->op.nresults; i++) emlx_array_fail(job->op.results[i], kind, msg);
  } else if (job->kind == EMLX_JOB_PROGRAM && job->program.results) {
    for (int i = 0; i < job->program.nresults; i++) emlx_array_fail(job->program.results[i], kind, msg);
  } else if (job->kind == EMLX_JOB_ASYNC_EVAL) {
    /* nothing to start: the failed array raises when it is read */
  } else {
    emlx_reply_failure(job, kind, msg);
  }
  return 0;
}

/* ---- job bodies ---- */

/* Run-ahead (GPU queues). Eager ops only build MLX's lazy graph; the
 * device computes nothing until something reads a result. In a loop of
 * small eager ops the worker waits for the BEAM's next op most of the time
 * and the GPU idles, then the whole graph runs at the first read. So once a
 * queue has run q->run_ahead eager ops since its last background eval, it
 * keeps a handle on the newest op's result, and when it next finds no job
 * posted (it has caught up with its callers) it starts that result's graph
 * with mx::async_eval: the GPU computes while the BEAM posts, as PyTorch's
 * CUDA queue does. A caller posting faster than the worker runs never
 * triggers it. Results are the same (eager ops are not fused either way);
 * an error of that eval is left for the read that waits on the array, as
 * with EMLX.async_eval. The count is the queue's `run_ahead` option (see
 * EMLX.CommandQueue); without one, EMLX_RUN_AHEAD=n as the VM starts, else
 * 256 on the GPU, and 0 (off) on the CPU, where MLX's stream thread and
 * the BEAM share the cores. */
#define RUN_AHEAD_GPU_DEFAULT 256

static int run_ahead_for(emlx_device dev) { /* (the default) */
  long long n = emlx_env_us("EMLX_RUN_AHEAD", dev == EMLX_DEV_GPU ? RUN_AHEAD_GPU_DEFAULT : 0);
  return n > 1000000 ? 1000000 : (int)n;
}

static void drop_ahead(emlx_queue *q) {
  if (q->ahead) emlx_arr_drop_at(q->ahead);
  q->ahead = NULL;
}

static void note_lazy_op(emlx_queue *q, const emlx_arr *out) {
  if (!q->run_ahead || ++q->lazy_ops < q->run_ahead) return;
  drop_ahead(q);
  q->ahead = emlx_arr_retain_at(out, q->ahead_store);
}

/* Called by the worker when it has no job in hand. */
static void run_ahead_when_idle(emlx_queue *q) {
  if (!q->ahead || atomic_load_explicit(&q->pending, memory_order_acquire) != 0) return;
  (void)emlx_async_eval(q->stream, &q->ahead, 1); /* an error shows at the read */
  drop_ahead(q);
  q->lazy_ops = 0;
}

/* Fills the op's pending results; on error each result records it. */
static void run_op(emlx_queue *q, emlx_job *job) {
  emlx_op_job *op = &job->op;
  emlx_arr *outs[EMLX_MAX_OUTS];
  int n = 0;
  emlx_status st = emlx_op_run(op->index, q->stream, op->args, op->nargs, op->out_dtype, outs, &n);
  if (st == EMLX_OK && n != op->nresults) {
    for (int i = 0; i < n; i++) emlx_arr_free(outs[i]);
    for (int i = 0; i < op->nresults; i++) emlx_array_fail(op->results[i], EMLX_ERR_MLX, "unexpected number of op results");
    return;
  }
  if (st != EMLX_OK) {
    const char *msg = emlx_last_error();
    for (int i = 0; i < op->nresults; i++) emlx_array_fail(op->results[i], st, msg);
    return;
  }
  note_lazy_op(q, outs[0]);
  for (int i = 0; i < n; i++) emlx_array_fill(op->results[i], outs[i]);
}

/* Replies with a new array (or the error that kept it from being made). */
void emlx_reply_array(emlx_job *job, emlx_status st, emlx_arr *out) {
  if (st != EMLX_OK) {
    emlx_reply_error(job, st);
    return;
  }
  ERL_NIF_TERM t = emlx_make_array(job->env, job->qres, out);
  if (!t)
    emlx_reply_oom(job);
  else
    emlx_reply_ok(job, t);
}

/* Evaluates the array into a row-contiguous host view; replies with the
 * error and returns 0 when it cannot. */
int emlx_host_view(emlx_queue *q, emlx_job *job, const emlx_arr *arr, emlx_arr **view, const void **data, size_t *nbytes) {
  emlx_status st = emlx_arr_host_view(q->stream, arr, view, data, nbytes);
  if (st == EMLX_OK) return 1;
  emlx_reply_error(job, st);
  return 0;
}

/* The binary is a resource binary over the evaluated array's own memory:
 * no copy, and the array lives as long as the binary does. */
static void run_to_binary(emlx_queue *q, emlx_job *job) {
  emlx_arr *view;
  const void *data;
  size_t nbytes;
  if (!emlx_host_view(q, job, job->to_binary.arr, &view, &data, &nbytes)) return;
  emlx_array_res *res = emlx_array_res_new(job->qres, view, EMLX_ARR_READY);
  if (!res) {
    emlx_arr_free(view);
    emlx_reply_oom(job);
    return;
  }
  size_t size = job->to_binary.limit < nbytes ? job->to_binary.limit : nbytes;
  ERL_NIF_TERM bin = enif_make_resource_binary(job->env, res, data, size);
  enif_release_resource(res);
  emlx_reply_ok(job, bin);
}

/* mx::eval blocks until the arrays are computed: no stream-wide sync after it
 * (that was one more round trip to MLX's stream thread per eval). */
static void run_eval(emlx_queue *q, emlx_job *job) {
  emlx_reply_status(job, emlx_eval(q->stream, job->eval.inputs, job->eval.ninputs));
}

/* Starts the computation and returns at once (mx::async_eval): the worker
 * goes on to its next job, e.g. building the next graph, while the device
 * runs this one. No reply; an error shows at the read or eval that waits. */
static void run_async_eval(emlx_queue *q, emlx_job *job) {
  emlx_async_eval(q->stream, job->eval.inputs, job->eval.ninputs);
}

static void run_sync(emlx_queue *q, emlx_job *job) { emlx_reply_status(job, emlx_stream_synchronize(q->stream)); }

/* ---- the running queues, quiesced at the VM's exit ---- */

static pthread_mutex_t running_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t quiesced_cv = PTHREAD_COND_INITIALIZER;
static emlx_queue **running;
static int nrunning, cap_running;
static int quiesce_left; /* QUIESCE jobs posted and not yet done (under running_mu) */
static pthread_cond_t parked_cv = PTHREAD_COND_INITIALIZER; /* workers parked at the exit wait here */

static void running_add(emlx_queue *q) {
  pthread_mutex_lock(&running_mu);
  if (nrunning == cap_running) {
    int cap = cap_running ? cap_running * 2 : 16;
    emlx_queue **n = realloc(running, sizeof *n * (size_t)cap);
    if (n) {
      running = n;
      cap_running = cap;
    }
  }
  if (nrunning < cap_running) running[nrunning++] = q; /* (no memory: not quiesced at exit) */
  pthread_mutex_unlock(&running_mu);
}

static void running_remove_locked(emlx_queue *q) {
  for (int i = 0; i < nrunning; i++)
    if (running[i] == q) {
      running[i] = running[--nrunning];
      break;
    }
}

/* A worker leaves the list as its thread ends; a QUIESCE job left behind
 * its STOP (in batch or still posted) is counted done. */
static void running_leave(emlx_queue *q, emlx_job *batch) {
  pthread_mutex_lock(&q->mu);
  emlx_job *posted = q->head;
  q->head = q->tail = NULL;
  pthread_mutex_unlock(&q->mu);
  pthread_mutex_lock(&running_mu);
  running_remove_locked(q);
  for (emlx_job *lists[2] = {batch, posted}, **l = lists; l < lists + 2; l++)
    for (emlx_job *j = *l, *next; j; j = next) {
      next = j->next;
      if (j->kind == EMLX_JOB_QUIESCE) {
        quiesce_left--;
        emlx_job_free(j);
      }
    }
  pthread_cond_broadcast(&quiesced_cv);
  pthread_mutex_unlock(&running_mu);
}

/* The process is exiting: the worker finishes its stream's work, reports
 * it, and then stays parked, so that it no longer touches MLX while the
 * libraries tear down (a job posted meanwhile, e.g. freeing an array
 * collected as the VM stops, is left undone: the process ends). */
static void run_quiesce(emlx_queue *q, emlx_job *job) {
  (void)job;
  emlx_stream_synchronize(q->stream);
  pthread_mutex_lock(&running_mu);
  quiesce_left--;
  pthread_cond_broadcast(&quiesced_cv);
  for (;;) pthread_cond_wait(&parked_cv, &running_mu); /* (never signalled) */
}

void emlx_queues_quiesce(int timeout_ms) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += timeout_ms / 1000;
  until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&running_mu);
  /* (a queue stays in the list while its thread runs, so posting to it
   * under running_mu is safe; its QUIESCE job runs before a later STOP) */
  for (int i = 0; i < nrunning; i++) {
    emlx_job *job = emlx_job_new(EMLX_JOB_QUIESCE, NULL);
    if (!job) continue;
    quiesce_left++;
    emlx_queue_post(running[i], job);
  }
  while (quiesce_left > 0)
    if (pthread_cond_timedwait(&quiesced_cv, &running_mu, &until) != 0) break;
  pthread_mutex_unlock(&running_mu);
}

/* Every job posted before this one has run: no wait on the stream (the
 * device may still be computing what they asked for). */
static void run_drain(emlx_queue *q, emlx_job *job) {
  (void)q;
  emlx_reply_status(job, EMLX_OK);
}

/* ---- programs ---- */

static void run_program(emlx_queue *q, emlx_job *job) {
  emlx_program *p = &job->program.res->prog;
  emlx_arr **outs = enif_alloc(sizeof(emlx_arr *) * (size_t)(p->nouts ? p->nouts : 1));
  ERL_NIF_TERM *terms = enif_alloc(sizeof(ERL_NIF_TERM) * (size_t)(p->nouts ? p->nouts : 1));
  if (!outs || !terms) {
    if (outs) enif_free(outs);
    if (terms) enif_free(terms);
    emlx_reply_oom(job);
    return;
  }
  emlx_status st = emlx_program_run(q->stream, p, job->program.inputs, job->program.ninputs, job->program.compile, outs);
  if (job->program.results) {
    /* posted: the outputs were handed out pending */
    for (int i = 0; i < job->program.nresults; i++) {
      if (st == EMLX_OK)
        emlx_array_fill(job->program.results[i], outs[i]);
      else
        emlx_array_fail(job->program.results[i], st, emlx_last_error());
    }
  } else if (st != EMLX_OK) {
    emlx_reply_error(job, st);
  } else {
    int ok = 1;
    for (int i = 0; i < p->nouts; i++) {
      if (!ok) {
        emlx_arr_free(outs[i]);
        continue;
      }
      terms[i] = emlx_make_array(job->env, job->qres, outs[i]);
      if (!terms[i]) ok = 0;
    }
    if (ok)
      emlx_reply_ok(job, enif_make_list_from_array(job->env, terms, (unsigned)p->nouts));
    else
      emlx_reply_oom(job);
  }
  enif_free(outs);
  enif_free(terms);
}

/* ---- the thread ---- */

/* What the worker runs for each kind of job (FREE only frees the job). */
static void (*const job_bodies[])(emlx_queue *q, emlx_job *job) = {
    [EMLX_JOB_OP] = run_op,
    [EMLX_JOB_FROM_BINARY] = emlx_run_from_binary,
    [EMLX_JOB_TO_BINARY] = run_to_binary,
    [EMLX_JOB_EVAL] = run_eval,
    [EMLX_JOB_ASYNC_EVAL] = run_async_eval,
    [EMLX_JOB_SYNC] = run_sync,
    [EMLX_JOB_DRAIN] = run_drain,
    [EMLX_JOB_PROGRAM] = run_program,
    [EMLX_JOB_TO_POINTER] = emlx_run_to_pointer,
    [EMLX_JOB_FROM_POINTER] = emlx_run_from_pointer,
    [EMLX_JOB_LOAD_SAFETENSORS] = emlx_run_load_safetensors,
    [EMLX_JOB_SAVE_SAFETENSORS] = emlx_run_save_safetensors,
    [EMLX_JOB_FREE] = NULL,
    [EMLX_JOB_QUIESCE] = run_quiesce,
    [EMLX_JOB_STOP] = NULL,
};

static void queue_destroy(emlx_queue *q) {
  bp_notify(q); /* (none is left: the depth reached 0) */
  if (q->bp) enif_free(q->bp);
  pthread_mutex_destroy(&q->bp_mu);
  drop_ahead(q);
  if (q->stream) emlx_stream_free(q->stream);
  pthread_cond_destroy(&q->cv);
  pthread_mutex_destroy(&q->mu);
  enif_free(q);
}

static void *worker_main(void *arg) {
  emlx_queue *q = arg;
  /* named for perf, top and the kernel's reports (MLX's stream thread,
   * made on this one, inherits the name) */
  pthread_setname_np(pthread_self(), q->device == EMLX_DEV_GPU ? "emlx_gpu" : "emlx_cpu");
  emlx_stream *s = NULL;
  emlx_status st = emlx_stream_new(q->device, &s);
  pthread_mutex_lock(&q->mu);
  if (st != EMLX_OK) {
    snprintf(q->error, sizeof q->error, "%s", emlx_last_error());
    q->state = -1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return NULL; /* the starter frees q */
  }
  q->stream = s;
  q->state = 1;
  pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
  running_add(q); /* (not under q->mu: emlx_queues_quiesce posts under running_mu) */

  /* The jobs taken off the queue and not yet run, in order: the worker
   * takes every posted job under one lock, so that in a dispatch-bound loop
   * the posting caller and the worker do not trade the lock once per job. */
  emlx_job *batch = NULL;
  for (;;) {
    if (!batch) {
      run_ahead_when_idle(q);
      /* A caller usually posts its next job right after our reply: look for
       * it for a short while before sleeping on the condition variable,
       * which saves a futex wake-up per op in a dispatch-bound loop. */
      for (int spin = 0; spin < WORKER_SPIN_ROUNDS && !atomic_load_explicit(&q->pending, memory_order_acquire);
           spin++)
        sched_yield();
      pthread_mutex_lock(&q->mu);
      while (!q->head) {
        q->sleeping = 1;
        pthread_cond_wait(&q->cv, &q->mu);
        q->sleeping = 0;
      }
      batch = q->head;
      q->head = q->tail = NULL;
      pthread_mutex_unlock(&q->mu);
    }
    emlx_job *job = batch;
    batch = job->next; /* (the job may be freed below) */

    /* A polled job is freed by its reply (or by the caller it replies to).
     * pending counts a job until it is done (see emlx_queue_idle). */
    int polled = atomic_load_explicit(&job->poll, memory_order_relaxed) != EMLX_POLL_NONE;
    if (job->nfixups && !resolve(job)) {
      if (!polled) emlx_job_free(job);
      job_done(q);
      continue;
    }
    int stop = job->kind == EMLX_JOB_STOP;
    if (job_bodies[job->kind]) job_bodies[job->kind](q, job);
    if (!polled) emlx_job_free(job);
    job_done(q);
    if (stop) break;
  }
  running_leave(q, batch);
  queue_destroy(q);
  return NULL;
}

emlx_queue *emlx_queue_start(emlx_device dev, int run_ahead) {
  emlx_queue *q = enif_alloc(sizeof(emlx_queue));
  if (!q) return NULL;
  memset(q, 0, sizeof *q);
  q->device = dev;
  q->run_ahead = run_ahead >= 0 ? run_ahead : run_ahead_for(dev);
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->cv, NULL);
  pthread_mutex_init(&q->bp_mu, NULL);
  const char *low = getenv("EMLX_BACKPRESSURE_LOW");
  q->bp_low = low ? atoi(low) : EMLX_BACKPRESSURE_LOW;
  if (q->bp_low < 0 || q->bp_low > EMLX_BACKPRESSURE) q->bp_low = EMLX_BACKPRESSURE_LOW;

  pthread_attr_t attr;
  pthread_t tid;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, WORKER_STACK_BYTES);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  int rc = pthread_create(&tid, &attr, worker_main, q);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    snprintf(q->error, sizeof q->error, "could not start a worker thread (error %d)", rc);
    q->state = -1;
    return q;
  }
  pthread_mutex_lock(&q->mu);
  while (q->state == 0) pthread_cond_wait(&q->cv, &q->mu);
  pthread_mutex_unlock(&q->mu);
  return q;
}

void emlx_queue_discard(emlx_queue *q) { queue_destroy(q); }
