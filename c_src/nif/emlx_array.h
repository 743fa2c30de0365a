/* The array resource and its state machine.
 *
 * Ops return their result resources at once, PENDING; the worker fills
 * them in queue order (READY), or records the error (FAILED), which every
 * later use of the array reports. `arr` is NULL once deallocated. The
 * fields below `lock` are read and written under it, only in emlx_array.c. */
#ifndef EMLX_ARRAY_H
#define EMLX_ARRAY_H

#include <erl_nif.h>
#include <stdatomic.h>
#include <stddef.h>

#include "emlx_resources.h"
#include "emlx_shim.h"

enum { EMLX_ARR_READY = 0, EMLX_ARR_PENDING = 1, EMLX_ARR_FAILED = 2 };

typedef struct {
  emlx_arr *arr;
  emlx_queue_res *owner; /* kept alive while the array lives */
  atomic_flag lock;
  int state;
  int dealloc_requested; /* deallocated while pending: drop it when filled */
  int readers;           /* jobs posted to read it while pending (see emlx_array_add_reader) */
  int error_kind;        /* an emlx_status, when FAILED */
  char *error;           /* enif_alloc'd message, when FAILED */
} emlx_array_res;

/* A new array resource (one reference, the caller's) of the queue. */
emlx_array_res *emlx_array_res_new(emlx_queue_res *owner, emlx_arr *a, int state);
/* A term for a new READY array (0 when out of memory; a is freed then). */
ERL_NIF_TERM emlx_make_array(ErlNifEnv *env, emlx_queue_res *owner, emlx_arr *a);
/* A new PENDING array resource of the queue (kept once for the job that fills it). */
ERL_NIF_TERM emlx_make_pending(ErlNifEnv *env, emlx_queue_res *owner, emlx_array_res **res_out);

/* Takes a retained handle from a READY array term, made in storage (of
 * EMLX_ARR_BYTES, see emlx_arr_retain_at) when not NULL. Otherwise NULL,
 * with *state_out telling why (PENDING, FAILED, or READY for a dead/bad
 * term) and a message in err (the error kind in *kind_out when FAILED). */
emlx_arr *emlx_take_array(ErlNifEnv *env, ERL_NIF_TERM t, void *storage, emlx_array_res **res_out, int *state_out,
                          int *kind_out, char *err, size_t errlen);

/* As emlx_take_array, but retains nothing: visit(handle, ctx) reads the
 * READY array under the resource's lock, on the calling thread. For reads
 * on a scheduler (shape, type, state): a handle retained there would be
 * dropped there, and an MLX array is dropped only on its queue's thread.
 * 1 when visited, else 0 as emlx_take_array's NULL. */
int emlx_peek_array(ErlNifEnv *env, ERL_NIF_TERM t, void (*visit)(const emlx_arr *, void *), void *ctx,
                    emlx_array_res **res_out, int *state_out, int *kind_out, char *err, size_t errlen);
/* As emlx_peek_array, for a resource already looked up. */
int emlx_peek_res(emlx_array_res *res, void (*visit)(const emlx_arr *, void *), void *ctx, int *state_out,
                  int *kind_out, char *err, size_t errlen);

/* Whether t is an array whose op failed (its error is kept for its reads). */
int emlx_array_failed(ErlNifEnv *env, ERL_NIF_TERM t);
/* Takes the handle out; a pending array is marked to be dropped when computed. */
emlx_arr *emlx_array_detach(emlx_array_res *res, int *marked_pending);
/* Replaces a live handle and returns the old one; NULL (and keeps nothing)
 * when the tensor was deallocated meanwhile. */
emlx_arr *emlx_array_swap(emlx_array_res *res, emlx_arr *a);

/* ---- worker side ---- */

/* A retained handle (in storage when not NULL) of an input that was
 * pending when its job was decoded; NULL with the error's kind and message
 * when it failed, was deallocated, or is still pending. */
emlx_arr *emlx_array_resolve(emlx_array_res *res, void *storage, int *kind, char *msg, size_t msglen);
/* Fills a pending result, or fails it. */
void emlx_array_fill(emlx_array_res *res, emlx_arr *a);
/* A job posted now reads the pending array when it runs: deallocating the
 * array meanwhile keeps its handle for that job. Each reader is dropped by
 * emlx_array_resolve, or by emlx_array_drop_reader when its job never runs. */
void emlx_array_add_reader(emlx_array_res *res);
void emlx_array_drop_reader(emlx_array_res *res);
void emlx_array_fail(emlx_array_res *res, int kind, const char *msg);

#endif
