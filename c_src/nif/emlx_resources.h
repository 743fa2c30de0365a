/* Atoms and resource types: set once at load (emlx_resources_load) and
 * read everywhere after. Also the queue and program resources, which are
 * small enough to need no module of their own; the array resource has one
 * (emlx_array.h). The destructors, in emlx_resources.c, hand what must be
 * dropped on a queue's own thread to its worker. */
#ifndef EMLX_RESOURCES_H
#define EMLX_RESOURCES_H

#include <erl_nif.h>

#include "emlx_arena.h"
#include "emlx_shim.h"

typedef struct {
  ERL_NIF_TERM ok, error, nil, true_, false_, cpu, gpu, mlx, argument, nan, infinity, neg_infinity,
      already_deallocated, bool_, exception, struct_, message, argument_error,
      active_memory, peak_memory, cache_memory, wait, pending, swept, while_, cond;
} emlx_atoms;
extern emlx_atoms ATOM;

extern ErlNifResourceType *emlx_queue_type;
extern ErlNifResourceType *emlx_array_type;
extern ErlNifResourceType *emlx_program_type;
extern ErlNifResourceType *emlx_barrier_type;

typedef struct emlx_queue emlx_queue; /* a command queue (emlx_worker.h) */

/* The NIF resource for a queue. The worker thread outlives it: the
 * destructor posts a stop job and the thread frees the queue. */
typedef struct {
  emlx_queue *q;
} emlx_queue_res;

/* The live queue a term refers to: 1 and *out set, or 0. */
int emlx_get_queue(ErlNifEnv *env, ERL_NIF_TERM t, emlx_queue_res **out);

/* The NIF resource for a program (see emlx_program_run in emlx_shim.h).
 * It belongs to one queue: MLX's compile cache is per thread. It keeps the
 * programs its loop instructions run (subs). */
typedef struct emlx_program_res {
  emlx_queue_res *owner;
  emlx_program prog;
  emlx_arena arena; /* holds the decoded argument lists */
  struct emlx_program_res **subs;
  int nsubs;
} emlx_program_res;

/* A sweep barrier (EMLX.NIF.sweep_barrier/0): made and dropped at once, so
 * its destructor is queued behind those of the resources a garbage
 * collection of the same process just dropped (the BEAM runs resource
 * destructors later, in order, as work of the scheduler that dropped them);
 * it then sends {ref, :swept} to pid. */
typedef struct {
  ErlNifPid pid;
  ErlNifEnv *env; /* holds ref */
  ERL_NIF_TERM ref;
} emlx_barrier_res;

/* Opens the resource types and makes the atoms; 0 on success. */
int emlx_resources_load(ErlNifEnv *env);

#endif
