/* Polled replies (see below). */
#include <stdatomic.h>

#include "emlx_poll.h"
#include "emlx_worker.h"

/* A short job (an eval, a small read) replies within microseconds, and a
 * reply by message costs a thread wake-up on each side. emlx_submit_polled
 * posts the job and polls for its reply from a rescheduled NIF
 * (enif_schedule_nif: the scheduler runs other processes in between), for
 * up to the queue's poll window; it then returns {:emlx_done, reply}. Past
 * that, the caller gets the job's reference and receives the reply as a
 * message, as after submit. EMLX.Worker.await/1 takes either.
 *
 * The window: 100 us on a CPU queue, where a polling scheduler would take a
 * core from MLX's own threads. On a GPU queue of a host with 8 cores or
 * more, 5 ms: a GPU eval of a few milliseconds then returns without the
 * message's wake-up of the caller's scheduler, which took 50-200 us on the
 * H200 hosts (eager softmax 8192^2: 826 us a call with 100 us, 747-751 with
 * 3 ms, against Python MLX's 724-736; a 1 GiB NCCL all_sum, 3.4-4 ms, is
 * covered by 5 ms). A poll yields to the scheduler's other processes.
 * EMLX_REPLY_POLL_US sets both windows.
 *
 * Only a few callers at once poll past 100 us (long_slots, one for each 8
 * cores): with every scheduler polling, concurrent callers would take the
 * cores that the workers and MLX's threads need (the GPU suite's parts, run
 * side by side, ran out of time so). Other callers poll 100 us. */
#define EMLX_POLL_NS 100000
#define EMLX_POLL_GPU_NS 5000000
static long long poll_ns[2] = {EMLX_POLL_NS, EMLX_POLL_NS}; /* by device; set at load */
static int long_slots = 1;                                   /* set at load */
static atomic_int long_polls;                                /* callers in a window past 100 us */

static ErlNifResourceType *emlx_poll_type;
static ERL_NIF_TERM atom_emlx_done;

typedef struct {
  emlx_job *job; /* the polled job; NULL once its reply is taken or left to the worker */
  int long_slot; /* 1 while it holds one of long_slots */
} emlx_poll_res;

static void release_long_slot(emlx_poll_res *r) {
  if (r->long_slot) atomic_fetch_sub(&long_polls, 1);
  r->long_slot = 0;
}

/* The window for a job on a queue of device dev: a long one while a slot is
 * free. */
static long long poll_window(emlx_poll_res *r, int dev) {
  long long ns = poll_ns[dev == EMLX_DEV_GPU];
  if (ns <= EMLX_POLL_NS) return ns;
  if (atomic_fetch_add(&long_polls, 1) < long_slots) {
    r->long_slot = 1;
    return ns;
  }
  atomic_fetch_sub(&long_polls, 1);
  return EMLX_POLL_NS;
}

/* The polling process is gone before the reply was taken. */
static void poll_dtor(ErlNifEnv *env, void *obj) {
  (void)env;
  emlx_poll_res *r = obj;
  release_long_slot(r);
  if (!r->job) return;
  int expected = EMLX_POLL_WAITING;
  if (!atomic_compare_exchange_strong(&r->job->poll, &expected, EMLX_POLL_ABANDONED))
    emlx_job_free(r->job); /* DONE, never taken */
  r->job = NULL;
}

/* poll_reply(poll resource, deadline in ns, job reference) */
static ERL_NIF_TERM poll_reply(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  emlx_poll_res *r;
  ErlNifSInt64 deadline;
  if (!enif_get_resource(env, argv[0], emlx_poll_type, (void **)&r) || !r->job ||
      !enif_get_int64(env, argv[1], &deadline))
    return enif_make_badarg(env);
  emlx_job *job = r->job;
  if (atomic_load_explicit(&job->poll, memory_order_acquire) == EMLX_POLL_WAITING) {
    if (enif_monotonic_time(ERL_NIF_NSEC) < deadline) {
      enif_consume_timeslice(env, 1); /* yield to the scheduler's other processes every 100 polls */
      return enif_schedule_nif(env, "poll_reply", 0, poll_reply, argc, argv);
    }
    release_long_slot(r);
    int expected = EMLX_POLL_WAITING;
    if (atomic_compare_exchange_strong(&job->poll, &expected, EMLX_POLL_ABANDONED)) {
      r->job = NULL; /* the worker sends the reply and frees the job */
      return argv[2];
    }
  }
  release_long_slot(r);
  ERL_NIF_TERM result = enif_make_copy(env, job->poll_result);
  r->job = NULL;
  emlx_job_free(job);
  return enif_make_tuple2(env, atom_emlx_done, result);
}

/* As submit, with the reply polled for (see above). */
ERL_NIF_TERM emlx_submit_polled(ErlNifEnv *env, emlx_job *job) {
  emlx_poll_res *r = enif_alloc_resource(emlx_poll_type, sizeof(emlx_poll_res));
  if (!r) return emlx_job_submit(env, job);
  r->long_slot = 0;
  ERL_NIF_TERM ref = enif_make_ref(env);
  job->ref = enif_make_copy(job->env, ref);
  if (!enif_self(env, &job->pid)) {
    r->job = NULL;
    enif_release_resource(r);
    emlx_job_free(job);
    return emlx_raise_arg(env, "EMLX calls must come from a process");
  }
  r->job = job;
  atomic_store(&job->poll, EMLX_POLL_WAITING);
  ERL_NIF_TERM res = enif_make_resource(env, r);
  enif_release_resource(r);
  ERL_NIF_TERM args[3] = {res, enif_make_int64(env, enif_monotonic_time(ERL_NIF_NSEC) + poll_window(r, job->qres->q->device)), ref};
  emlx_queue_post(job->qres->q, job);
  return enif_schedule_nif(env, "poll_reply", 0, poll_reply, 3, args);
}

/* The poll windows (see above); EMLX_REPLY_POLL_US (microseconds,
 * 0 to 10 s) sets both. */
static void tune_poll(void) {
  if (emlx_host_cores() >= 8) poll_ns[1] = EMLX_POLL_GPU_NS;
  long_slots = emlx_busy_wait_slots();
  long long us = emlx_env_us("EMLX_REPLY_POLL_US", -1);
  if (us >= 0) poll_ns[0] = poll_ns[1] = us * 1000LL;
}

int emlx_poll_load(ErlNifEnv *env) {
  emlx_poll_type = enif_open_resource_type(env, NULL, "emlx_poll", poll_dtor, ERL_NIF_RT_CREATE, NULL);
  if (!emlx_poll_type) return 1;
  atom_emlx_done = enif_make_atom(env, "emlx_done");
  tune_poll();
  return 0;
}
