/* Jobs: one unit of work for a queue's worker thread, made and decoded on
 * the calling scheduler. A job holds every array handle it reads (so none
 * is freed under it) and resolves, on the worker, inputs that were still
 * pending when it was decoded. */
#ifndef EMLX_JOB_H
#define EMLX_JOB_H

#include <erl_nif.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "emlx_arena.h"
#include "emlx_array.h"
#include "emlx_codec.h"
#include "emlx_resources.h"
#include "emlx_shim.h"

typedef enum {
  EMLX_JOB_OP,
  EMLX_JOB_FROM_BINARY,
  EMLX_JOB_TO_BINARY,
  EMLX_JOB_EVAL,
  EMLX_JOB_ASYNC_EVAL,
  EMLX_JOB_SYNC,
  EMLX_JOB_DRAIN,
  EMLX_JOB_PROGRAM,
  EMLX_JOB_TO_POINTER,
  EMLX_JOB_FROM_POINTER,
  EMLX_JOB_LOAD_SAFETENSORS,
  EMLX_JOB_SAVE_SAFETENSORS,
  EMLX_JOB_FREE,
  EMLX_JOB_QUIESCE, /* at the VM's exit: the stream's work done, then the worker parks (emlx_queues_quiesce) */
  EMLX_JOB_STOP
} emlx_job_kind;

typedef struct emlx_job emlx_job;

#define EMLX_JOB_BOXES 4
typedef struct {
  _Alignas(8) unsigned char bytes[EMLX_ARR_BYTES];
} emlx_arr_box;

/* A pending input: resolved into *slot on the worker before the job runs
 * (queue order guarantees its producer ran first). */
typedef struct {
  emlx_array_res *res; /* kept */
  emlx_arr **slot;
} emlx_fixup;

/* ---- what each kind of job carries ---- */

typedef struct { /* OP: one op of the op table */
  int index;
  int out_dtype; /* -1: the op's own types */
  int nargs;
  emlx_arg args[EMLX_MAX_ARGS];
  emlx_array_res *results[EMLX_MAX_OUTS]; /* pending until the op runs (kept) */
  int nresults;
} emlx_op_job;

typedef struct { /* FROM_BINARY */
  emlx_array_spec spec;
  const void *data; /* a binary held by the job's env */
  size_t nbytes;
  emlx_array_res *result; /* pending until the array is made (kept) */
  int nresult;
} emlx_from_binary_job;

typedef struct { /* TO_BINARY */
  emlx_arr *arr;
  size_t limit;
} emlx_to_binary_job;

typedef struct { /* EVAL */
  emlx_arr **inputs;
  int ninputs;
} emlx_eval_job;

typedef struct { /* PROGRAM */
  emlx_program_res *res; /* kept */
  emlx_arr **inputs;
  int ninputs;
  int compile;
  /* Posted (program_post): the pending outputs (kept, enif_alloc'd), filled
   * by the worker; no reply. NULL: the outputs come in the reply. */
  emlx_array_res **results;
  int nresults;
} emlx_program_job;

typedef struct { /* TO_POINTER */
  emlx_array_res *res; /* kept: the array is made contiguous in place */
  emlx_arr *arr;
  int ipc;
  unsigned permissions;
  char shm_name[64];
} emlx_to_pointer_job;

typedef struct { /* FROM_POINTER */
  emlx_array_spec spec;
  size_t nbytes;
  int ipc;
  uintptr_t address;
  char shm_name[64];
} emlx_from_pointer_job;

typedef struct { /* LOAD_SAFETENSORS */
  const char *path; /* in the job's arena */
} emlx_load_job;

typedef struct { /* SAVE_SAFETENSORS: names and metadata in the job's arena */
  const char *path;
  const char **names;
  emlx_arr **arrs;
  int n;
  const char **meta_keys, **meta_values;
  int nmeta;
} emlx_save_job;

typedef struct { /* FREE: handles dropped on the queue's own thread */
  emlx_arr *arr;
  emlx_compiled *compiled;
} emlx_free_job;

/* A job whose caller polls for its reply (see emlx_poll.c)
 * instead of receiving a message. NONE: a message, as usual. WAITING: the
 * caller polls; the worker leaves the reply in the job and makes it DONE,
 * and the caller frees the job. ABANDONED: the caller stopped polling (it
 * waits for the message now, or is gone): the worker sends the reply and
 * frees the job. */
enum { EMLX_POLL_NONE, EMLX_POLL_WAITING, EMLX_POLL_DONE, EMLX_POLL_ABANDONED };

struct emlx_job {
  emlx_job *next;
  _Atomic int poll;         /* EMLX_POLL_*; set before the job is posted */
  ERL_NIF_TERM poll_result; /* the reply (in env) once DONE */
  emlx_job_kind kind;
  emlx_queue_res *qres; /* kept for the job's life (not for FREE/STOP) */
  ErlNifPid pid;
  ErlNifEnv *env; /* reply env; also holds the binaries the job reads */
  ERL_NIF_TERM ref;

  /* the arrays the job reads, decoded on the scheduler */
  emlx_arr **held; /* retained input handles, freed after the job */
  int nheld, cap_held;
  emlx_fixup *fixups;
  int nfixups, cap_fixups;
  int nresolved; /* fixups handed to emlx_array_resolve so far */
  emlx_arena arena; /* decoded lists */
  /* The first retained handles live in the job itself, so an op's inputs
   * cost no malloc on the scheduler and no free on the worker. held and
   * fixups keep their buffers when the job is reused. */
  emlx_arr_box boxes[EMLX_JOB_BOXES];
  int nboxes;
  int error_kind;   /* of a decode failure: EMLX_ERR_ARG, or EMLX_ERR_MLX for a failed input */

  union { /* by kind; STOP carries nothing */
    emlx_op_job op;
    emlx_from_binary_job from_binary;
    emlx_to_binary_job to_binary;
    emlx_eval_job eval;
    emlx_program_job program;
    emlx_to_pointer_job to_pointer;
    emlx_from_pointer_job from_pointer;
    emlx_load_job load;
    emlx_save_job save;
    emlx_free_job free;
  };
};

/* A new job (NULL when out of memory); keeps qres when given. FREE and STOP
 * jobs get no reply env. */
emlx_job *emlx_job_new(emlx_job_kind kind, emlx_queue_res *qres);
/* A new job of kind on the queue of term t; NULL after raising the error
 * (not a queue, out of memory) in *raised. */
emlx_job *emlx_job_for_queue(ErlNifEnv *env, ERL_NIF_TERM t, emlx_job_kind kind, ERL_NIF_TERM *raised);
/* Drops the job's array handles (the inputs it held, its reader marks):
 * done on the worker before a polled job's reply, since the caller's
 * scheduler frees that job, and MLX arrays are dropped only on their
 * queue's thread (an array's description is not thread-safe: a last
 * reference dropped elsewhere tears down a graph the worker is using). */
void emlx_job_release_arrays(emlx_job *job);
void emlx_job_free(emlx_job *job);

/* Posts the job to its queue and returns the reference its reply will
 * carry; raises (and frees the job) when not called from a process. */
ERL_NIF_TERM emlx_job_submit(ErlNifEnv *env, emlx_job *job);
/* A job whose results are handed out before it runs (an op's, a posted
 * program's): makes n pending arrays of its queue, each kept for the job in
 * res[] and counted in *nres as it is made, their terms in terms[]; 0 when
 * out of memory. */
int emlx_job_pending_results(ErlNifEnv *env, emlx_job *job, emlx_array_res **res, int *nres, ERL_NIF_TERM *terms,
                             int n);
/* Posts such a job and returns `results`, or {:wait, results} past the
 * backpressure depth (the caller waits for the worker); raises as
 * emlx_job_fail does when there is no calling process. */
ERL_NIF_TERM emlx_job_post_pending(ErlNifEnv *env, emlx_job *job, ERL_NIF_TERM results);
/* Frees the job and raises msg with the job's error kind. */
ERL_NIF_TERM emlx_job_fail(ErlNifEnv *env, emlx_job *job, const char *msg);

/* ---- decoding, on the scheduler ---- */

/* Decodes an array term the job reads into *slot: a retained handle, or a
 * pending input of the job's own queue to resolve on the worker. An array
 * used on a queue other than its own must already be computed and
 * evaluated: MLX streams are thread-local. On failure writes err and sets
 * job->error_kind (a failed array reports its own error). */
int emlx_job_take_array(ErlNifEnv *env, ERL_NIF_TERM t, emlx_job *job, emlx_arr **slot, char *err, size_t errlen);
/* Decodes a list of array terms into the job's arena, in order; with
 * nonempty, an empty list is an error. */
int emlx_job_take_arrays(ErlNifEnv *env, ERL_NIF_TERM t, emlx_job *job, int nonempty, emlx_arr ***v, int *n,
                         char *err, size_t errlen);
/* Decodes one op argument of the given kind: arrays as above, the rest by
 * the codec into the job's arena. */
int emlx_job_decode_arg(ErlNifEnv *env, ERL_NIF_TERM t, char kind, emlx_job *job, emlx_arg *out, char *err,
                        size_t errlen);

/* ---- on the worker ---- */

/* Resolves the job's pending inputs; on failure returns 0 with the error's
 * kind and message. */
int emlx_job_resolve(emlx_job *job, int *kind, char *msg, size_t msglen);

#endif
