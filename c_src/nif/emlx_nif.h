/* Shared declarations of the EMLX NIF: resource types, jobs, atoms. */
#ifndef EMLX_NIF_H
#define EMLX_NIF_H

#include <erl_nif.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "emlx_shim.h"

/* ---- command queues: one OS thread and one MLX stream each ---- */

typedef struct emlx_job emlx_job;

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  emlx_job *head, *tail;
  atomic_int pending; /* jobs queued, read without the lock while spinning */
  int sleeping;       /* the worker waits on cv (under mu) */
  emlx_stream *stream;
  emlx_device device;
  int state; /* 0 starting, 1 running, -1 failed to start */
  char error[512];
} emlx_queue;

/* The NIF resource for a queue. The worker thread outlives it: the
 * destructor posts a stop job and the thread frees the queue. */
typedef struct {
  emlx_queue *q;
} emlx_queue_res;

/* The NIF resource for an array. Ops return their result resources at
 * once, PENDING; the worker fills them in queue order (READY), or records
 * the error (FAILED), which every later use of the array reports. `arr` is
 * NULL once deallocated. Fields below `lock` are read and written under it. */
enum { EMLX_ARR_READY = 0, EMLX_ARR_PENDING = 1, EMLX_ARR_FAILED = 2 };

typedef struct {
  emlx_arr *arr;
  emlx_queue_res *owner; /* kept alive while the array lives */
  atomic_flag lock;
  int state;
  int dealloc_requested; /* deallocated while pending: drop it when filled */
  int error_kind;        /* an emlx_status, when FAILED */
  char *error;           /* enif_alloc'd message, when FAILED */
} emlx_array_res;

/* The NIF resource for a program (see emlx_program_run in emlx_shim.h).
 * It belongs to one queue: MLX's compile cache is per thread. */
typedef struct {
  emlx_queue_res *owner;
  emlx_instr *instrs;
  int ninstrs;
  int ninputs;
  int *out_slots;
  int nouts;
  struct emlx_job *arena; /* holds the decoded argument lists */
  emlx_compiled *compiled; /* made and used on the owner's thread */
} emlx_program_res;

/* ---- jobs ---- */

typedef enum {
  EMLX_JOB_OP,
  EMLX_JOB_FROM_BINARY,
  EMLX_JOB_TO_BINARY,
  EMLX_JOB_EVAL,
  EMLX_JOB_SYNC,
  EMLX_JOB_PROGRAM,
  EMLX_JOB_TO_POINTER,
  EMLX_JOB_FROM_POINTER,
  EMLX_JOB_FREE,
  EMLX_JOB_STOP
} emlx_job_kind;

typedef struct emlx_block {
  struct emlx_block *next;
  max_align_t data[];
} emlx_block;

struct emlx_job {
  emlx_job *next;
  emlx_job_kind kind;
  emlx_queue_res *qres; /* kept for the job's life (not for FREE/STOP) */
  ErlNifPid pid;
  ErlNifEnv *env; /* reply env; also holds the binaries the job reads */
  ERL_NIF_TERM ref;

  int op;
  int out_dtype;
  emlx_arg args[EMLX_MAX_ARGS];
  int nargs;

  emlx_arr **held; /* retained input handles, freed after the job */
  int nheld, cap_held;
  /* inputs still pending at decode: resolved on the worker before the job
   * runs (queue order guarantees their producers ran first) */
  struct {
    emlx_array_res *res;
    emlx_arr **slot;
  } *fixups;
  int nfixups, cap_fixups;
  emlx_arr **inputs; /* EVAL and PROGRAM: the decoded arrays, in order */
  int ninputs;
  emlx_array_res *results[EMLX_MAX_OUTS]; /* OP: the pending results (kept) */
  int nresults;
  int error_kind; /* of a decode failure: EMLX_ERR_ARG, or EMLX_ERR_MLX for a failed input */
  emlx_block *blocks; /* scratch memory for decoded lists */

  /* FROM_BINARY */
  const void *data;
  size_t nbytes;
  int64_t dims[EMLX_MAX_DIMS];
  int ndim;
  int dtype;

  /* TO_BINARY */
  size_t limit;

  /* TO_POINTER / FROM_POINTER */
  emlx_array_res *res; /* kept: a to_pointer array is made contiguous in place */
  int ipc;
  unsigned permissions;
  uintptr_t address;
  char shm_name[64];

  /* PROGRAM */
  emlx_program_res *program; /* kept */
  int compile;

  /* FREE */
  emlx_arr *free_arr;
  emlx_compiled *free_compiled;
};

/* ---- globals set at load ---- */
extern ErlNifResourceType *emlx_queue_type;
extern ErlNifResourceType *emlx_array_type;
extern ErlNifResourceType *emlx_program_type;

typedef struct {
  ERL_NIF_TERM ok, error, nil, true_, false_, cpu, gpu, mlx, argument, nan, infinity, neg_infinity,
      already_deallocated, bool_, exception, struct_, message, argument_error,
      active_memory, peak_memory, cache_memory, wait, pending;
} emlx_atoms;
extern emlx_atoms ATOM;

/* ---- worker (emlx_worker.c) ---- */
emlx_queue *emlx_queue_start(emlx_device dev);
void emlx_queue_discard(emlx_queue *q); /* for a queue whose thread never started */
void emlx_queue_post(emlx_queue *q, emlx_job *job);
emlx_job *emlx_job_new(emlx_job_kind kind, emlx_queue_res *qres);
void emlx_job_free(emlx_job *job);
void *emlx_job_alloc(emlx_job *job, size_t bytes);
int emlx_job_hold(emlx_job *job, emlx_arr *a);
void emlx_post_free(emlx_queue_res *owner, emlx_arr *a);

/* ---- codec (emlx_codec.c) ---- */
ERL_NIF_TERM emlx_raise_arg(ErlNifEnv *env, const char *fmt, ...);
/* Raises ArgumentError (EMLX_ERR_ARG) or EMLX.NIFError (EMLX_ERR_MLX). */
ERL_NIF_TERM emlx_raise_kind(ErlNifEnv *env, int kind, const char *msg);
int emlx_decode_dtype(ErlNifEnv *env, ERL_NIF_TERM t, int *dtype);
ERL_NIF_TERM emlx_encode_dtype(ErlNifEnv *env, int dtype);
int emlx_decode_dims(ErlNifEnv *env, ERL_NIF_TERM t, int64_t *dims, int *ndim);
ERL_NIF_TERM emlx_encode_dims(ErlNifEnv *env, const int64_t *dims, int ndim);
int emlx_decode_device(ErlNifEnv *env, ERL_NIF_TERM t, emlx_device *dev);
/* Decodes one op argument of the given kind into job->args[i]; on failure
 * writes a message to err. */
int emlx_decode_arg(ErlNifEnv *env, ERL_NIF_TERM t, char kind, emlx_job *job, emlx_arg *out, char *err,
                    size_t errlen);
/* Takes a retained handle from a READY array term. Otherwise NULL, with
 * *state_out telling why (PENDING, FAILED, or READY for a dead/bad term)
 * and a message in err (the error kind in *kind_out when FAILED). */
emlx_arr *emlx_take_array(ErlNifEnv *env, ERL_NIF_TERM t, emlx_array_res **res_out, int *state_out, int *kind_out,
                          char *err, size_t errlen);
/* A new array resource (one reference, the caller's) of the queue. */
emlx_array_res *emlx_array_res_new(emlx_queue_res *owner, emlx_arr *a, int state);
ERL_NIF_TERM emlx_make_array(ErlNifEnv *env, emlx_queue_res *owner, emlx_arr *a);
/* A new PENDING array resource of the queue (kept once for the job). */
ERL_NIF_TERM emlx_make_pending(ErlNifEnv *env, emlx_queue_res *owner, emlx_array_res **res_out);
/* Worker side: fill a pending result, or fail it. */
void emlx_array_fill(emlx_array_res *res, emlx_arr *a);
void emlx_array_fail(emlx_array_res *res, int kind, const char *msg);
/* Worker side: resolve a job's pending inputs; on failure returns 0 and sets kind and msg. */
int emlx_job_resolve(emlx_job *job, int *kind, char *msg, size_t msglen);
/* Takes the handle out; a pending array is marked to be dropped when computed. */
emlx_arr *emlx_array_detach(emlx_array_res *res, int *marked_pending);
/* Decodes one array term for a job into *slot (see emlx_decode_arg). */
int emlx_decode_array(ErlNifEnv *env, ERL_NIF_TERM t, emlx_job *job, emlx_arr **slot, char *err, size_t errlen);
emlx_arr *emlx_array_swap(emlx_array_res *res, emlx_arr *a);

#endif
