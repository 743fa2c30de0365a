/* The array resource's state machine. The lock is a spin lock: it is held
 * for a few loads and stores, never across a call into MLX but a retain. */
#include "emlx_array.h"

#include "emlx_codec.h"

#include <stdio.h>
#include <string.h>

static void spin_lock(emlx_array_res *r) {
  while (atomic_flag_test_and_set_explicit(&r->lock, memory_order_acquire)) {
  }
}
static void spin_unlock(emlx_array_res *r) { atomic_flag_clear_explicit(&r->lock, memory_order_release); }

emlx_array_res *emlx_array_res_new(emlx_queue_res *owner, emlx_arr *a, int state) {
  emlx_array_res *res = enif_alloc_resource(emlx_array_type, sizeof(emlx_array_res));
  if (!res) return NULL;
  memset(res, 0, sizeof *res);
  res->arr = a;
  res->owner = owner;
  res->state = state;
  atomic_flag_clear(&res->lock);
  enif_keep_resource(owner);
  return res;
}

ERL_NIF_TERM emlx_make_array(ErlNifEnv *env, emlx_queue_res *owner, emlx_arr *a) {
  emlx_array_res *res = emlx_array_res_new(owner, a, EMLX_ARR_READY);
  if (!res) {
    emlx_arr_free(a);
    return 0;
  }
  ERL_NIF_TERM t = enif_make_resource(env, res);
  enif_release_resource(res);
  return t;
}

ERL_NIF_TERM emlx_make_pending(ErlNifEnv *env, emlx_queue_res *owner, emlx_array_res **res_out) {
  emlx_array_res *res = emlx_array_res_new(owner, NULL, EMLX_ARR_PENDING);
  if (!res) return 0;
  enif_keep_resource(res); /* for the job that fills it */
  *res_out = res;
  ERL_NIF_TERM t = enif_make_resource(env, res);
  enif_release_resource(res);
  return t;
}

static emlx_arr *retain(const emlx_arr *a, void *storage) {
  return storage ? emlx_arr_retain_at(a, storage) : emlx_arr_retain(a);
}

/* The READY array of res: retained into *out (in storage when not NULL),
 * or, with visit, read by visit under the lock and not retained. 1 when
 * retained or read; else 0, with state_out, kind_out and err saying why. */
static int take_res(emlx_array_res *res, void *storage, void (*visit)(const emlx_arr *, void *), void *ctx,
                    emlx_arr **out, int *state_out, int *kind_out, char *err, size_t errlen) {
  spin_lock(res);
  int state = res->state;
  /* (a deallocated array may keep its handle for the jobs reading it) */
  int dead = state == EMLX_ARR_READY && (res->arr == NULL || res->dealloc_requested);
  int done = 0;
  if (state == EMLX_ARR_READY && !dead) {
    if (visit) {
      visit(res->arr, ctx);
      done = 1;
    } else {
      *out = retain(res->arr, storage);
      done = *out != NULL;
    }
  }
  if (state == EMLX_ARR_FAILED) {
    emlx_set_err(err, errlen, res->error ? res->error : "the op producing this tensor failed");
    if (kind_out) *kind_out = res->error_kind;
  }
  if (state == EMLX_ARR_PENDING && res->dealloc_requested) dead = 1, state = EMLX_ARR_READY;
  spin_unlock(res);
  *state_out = state;
  if (state == EMLX_ARR_PENDING) {
    emlx_set_err(err, errlen, "the tensor is not computed yet");
    return 0;
  }
  if (state == EMLX_ARR_FAILED) return 0;
  if (dead) {
    emlx_set_err(err, errlen, "the tensor has been deallocated");
    return 0;
  }
  if (!done) emlx_set_err(err, errlen, "out of memory");
  return done;
}

static emlx_array_res *lookup(ErlNifEnv *env, ERL_NIF_TERM t, int *state_out, char *err, size_t errlen) {
  emlx_array_res *res;
  *state_out = EMLX_ARR_READY;
  if (enif_get_resource(env, t, emlx_array_type, (void **)&res)) return res;
  emlx_set_err(err, errlen, "expected an EMLX array reference");
  return NULL;
}

emlx_arr *emlx_take_array(ErlNifEnv *env, ERL_NIF_TERM t, void *storage, emlx_array_res **res_out, int *state_out,
                          int *kind_out, char *err, size_t errlen) {
  emlx_array_res *res = lookup(env, t, state_out, err, errlen);
  if (!res) return NULL;
  if (res_out) *res_out = res;
  emlx_arr *a = NULL;
  return take_res(res, storage, NULL, NULL, &a, state_out, kind_out, err, errlen) ? a : NULL;
}

int emlx_peek_array(ErlNifEnv *env, ERL_NIF_TERM t, void (*visit)(const emlx_arr *, void *), void *ctx,
                    emlx_array_res **res_out, int *state_out, int *kind_out, char *err, size_t errlen) {
  emlx_array_res *res = lookup(env, t, state_out, err, errlen);
  if (!res) return 0;
  if (res_out) *res_out = res;
  return emlx_peek_res(res, visit, ctx, state_out, kind_out, err, errlen);
}

int emlx_peek_res(emlx_array_res *res, void (*visit)(const emlx_arr *, void *), void *ctx, int *state_out,
                  int *kind_out, char *err, size_t errlen) {
  return take_res(res, NULL, visit, ctx, NULL, state_out, kind_out, err, errlen);
}

int emlx_array_failed(ErlNifEnv *env, ERL_NIF_TERM t) {
  emlx_array_res *res;
  if (!enif_get_resource(env, t, emlx_array_type, (void **)&res)) return 0;
  spin_lock(res);
  int failed = res->state == EMLX_ARR_FAILED;
  spin_unlock(res);
  return failed;
}

/* Used by deallocate: takes the handle out under the lock. */
emlx_arr *emlx_array_detach(emlx_array_res *res, int *marked_pending) {
  spin_lock(res);
  /* Pending, or still to be read by a job posted while it was: the handle
   * goes once it is filled and read (emlx_array_fill, drop_reader_locked). */
  int later = res->state == EMLX_ARR_PENDING || (res->readers && res->arr);
  *marked_pending = later && !res->dealloc_requested;
  emlx_arr *a = NULL;
  if (later) {
    res->dealloc_requested = 1;
  } else {
    a = res->arr;
    res->arr = NULL;
  }
  spin_unlock(res);
  return a;
}

emlx_arr *emlx_array_swap(emlx_array_res *res, emlx_arr *a) {
  spin_lock(res);
  emlx_arr *old = res->arr;
  if (old) res->arr = a;
  spin_unlock(res);
  return old;
}

/* ---- worker side ---- */

/* One reader fewer: the last one frees a deallocated array's handle. */
static emlx_arr *drop_reader_locked(emlx_array_res *res) {
  if (res->readers > 0) res->readers--;
  if (res->readers || !res->dealloc_requested || res->state != EMLX_ARR_READY) return NULL;
  emlx_arr *gone = res->arr;
  res->arr = NULL;
  return gone;
}

void emlx_array_add_reader(emlx_array_res *res) {
  spin_lock(res);
  res->readers++;
  spin_unlock(res);
}

void emlx_array_drop_reader(emlx_array_res *res) {
  spin_lock(res);
  emlx_arr *gone = drop_reader_locked(res);
  spin_unlock(res);
  if (gone) emlx_arr_free(gone);
}

emlx_arr *emlx_array_resolve(emlx_array_res *res, void *storage, int *kind, char *msg, size_t msglen) {
  spin_lock(res);
  int state = res->state;
  emlx_arr *copy = state == EMLX_ARR_READY && res->arr ? retain(res->arr, storage) : NULL;
  emlx_arr *gone = drop_reader_locked(res);
  if (state == EMLX_ARR_FAILED) {
    *kind = res->error_kind;
    emlx_set_err(msg, msglen, res->error ? res->error : "the op producing this tensor failed");
  }
  spin_unlock(res);
  if (gone) emlx_arr_free(gone);
  if (state == EMLX_ARR_FAILED) return NULL;
  if (!copy) {
    *kind = EMLX_ERR_ARG;
    snprintf(msg, msglen, state == EMLX_ARR_PENDING ? "the tensor is not computed yet" : "the tensor has been deallocated");
  }
  return copy;
}

void emlx_array_fill(emlx_array_res *res, emlx_arr *a) {
  spin_lock(res);
  int drop = res->dealloc_requested && !res->readers;
  res->arr = drop ? NULL : a;
  res->state = EMLX_ARR_READY;
  spin_unlock(res);
  if (drop) emlx_arr_free(a);
}

void emlx_array_fail(emlx_array_res *res, int kind, const char *msg) {
  size_t n = strlen(msg);
  char *copy = enif_alloc(n + 1);
  if (copy) memcpy(copy, msg, n + 1);
  spin_lock(res);
  res->state = EMLX_ARR_FAILED;
  res->error_kind = kind;
  res->error = copy;
  spin_unlock(res);
}
