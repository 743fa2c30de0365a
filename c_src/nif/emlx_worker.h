/* Command queues: one OS thread and one MLX stream each. Jobs run in FIFO
 * order; replies go back to the calling process as {Ref, Result}. */
#ifndef EMLX_WORKER_H
#define EMLX_WORKER_H

#include <pthread.h>
#include <stdatomic.h>

#include "emlx_job.h"
#include "emlx_resources.h"
#include "emlx_shim.h"

/* Queue depth at which an op (or a posted program) asks its caller to wait
 * for the worker, and the depth at which that wait ends: the worker keeps
 * the jobs below it to run while the caller posts more. EMLX_BACKPRESSURE_LOW
 * in the environment when a queue starts sets the latter (0: the queue
 * drains first). */
#define EMLX_BACKPRESSURE 2048
#define EMLX_BACKPRESSURE_LOW 1024

/* A caller waiting for the depth to fall to the low mark: {ref, :ok} goes
 * to pid then. */
typedef struct {
  ErlNifPid pid;
  ErlNifEnv *env;
  ERL_NIF_TERM ref;
} emlx_bp_waiter;

struct emlx_queue {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  emlx_job *head, *tail;
  atomic_int pending; /* jobs posted and not yet done; read without the lock */
  int sleeping;       /* the worker waits on cv (under mu) */
  emlx_stream *stream;
  emlx_device device;
  int state; /* 0 starting, 1 running, -1 failed to start */
  char error[512];
  int run_ahead; /* eager ops between background evals while idle; 0: off */
  int lazy_ops;  /* eager ops run since the last background eval */
  emlx_arr *ahead; /* the newest op's result once lazy_ops reached run_ahead (in ahead_store) */
  _Alignas(8) char ahead_store[EMLX_ARR_BYTES];
  int bp_low;            /* the depth a backpressure wait ends at */
  pthread_mutex_t bp_mu; /* guards bp and bp_cap */
  atomic_int bp_n;       /* waiters in bp */
  emlx_bp_waiter *bp;
  int bp_cap;
};

/* Starts a queue's thread and waits until its stream exists: state 1, or
 * -1 with a message in error (then free it with emlx_queue_discard).
 * run_ahead: see emlx_worker.c (negative: the default). NULL when out of
 * memory. */
emlx_queue *emlx_queue_start(emlx_device dev, int run_ahead);
void emlx_queue_discard(emlx_queue *q); /* for a queue whose thread never started */
void emlx_queue_post(emlx_queue *q, emlx_job *job);
/* For a caller told to wait (past EMLX_BACKPRESSURE): :ok when the queue's
 * depth is at its low mark already, else a reference Ref; {Ref, :ok} is
 * sent to the caller once the depth falls to the mark. */
ERL_NIF_TERM emlx_queue_wait_low(ErlNifEnv *env, emlx_queue *q);
/* Posts a stop job: the thread ends after the jobs before it and frees q. */
void emlx_queue_stop(emlx_queue *q);
/* Waits (up to timeout_ms in all) until every running queue has run the
 * jobs posted so far and its stream's work is done. Called from the NIF's
 * exit handler (on_exit, registered at load): at the VM's exit, OpenBLAS's
 * library destructor stops its threads, and it hangs when a BLAS call of an
 * MLX stream is still in flight then (an async eval the script never read,
 * say). */
void emlx_queues_quiesce(int timeout_ms);
/* Frees a handle and/or a compiled replay on the queue's thread (right
 * here when no job can be allocated). Either may be NULL. */
void emlx_queue_free_later(emlx_queue *q, emlx_arr *a, emlx_compiled *c);

/* Replies to a job from its worker: {:ok, value}; :ok or the error of the
 * shim call that returned st; the error of that call; out of memory. */
void emlx_reply_ok(emlx_job *job, ERL_NIF_TERM value);
void emlx_reply_status(emlx_job *job, emlx_status st);
void emlx_reply_error(emlx_job *job, emlx_status st);
void emlx_reply_oom(emlx_job *job);
/* {:error, :argument | :mlx, msg} (kind EMLX_ERR_ARG or an MLX status) */
void emlx_reply_failure(emlx_job *job, int kind, const char *msg);
/* {:ok, array}, or the error of the shim call that returned st */
void emlx_reply_array(emlx_job *job, emlx_status st, emlx_arr *out);
/* A binary term of s in env (the atom out_of_memory when none can be made). */
ERL_NIF_TERM emlx_reply_string(ErlNifEnv *env, const char *s);
/* Evaluates arr into a row-contiguous host view (view retained, data and
 * nbytes into it); on failure replies with the error and returns 0. */
int emlx_host_view(emlx_queue *q, emlx_job *job, const emlx_arr *arr, emlx_arr **view, const void **data, size_t *nbytes);

#endif
