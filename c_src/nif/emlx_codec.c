/* The term codec: shapes, element types, axes, scalars and arrays between
 * Erlang terms and the shim's C values. Every check happens here, on the
 * calling scheduler, before MLX sees anything. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "emlx_nif.h"

/* Raises %ArgumentError{} or %EMLX.NIFError{} with the message. */
ERL_NIF_TERM emlx_raise_kind(ErlNifEnv *env, int kind, const char *msg) {
  ErlNifBinary bin;
  size_t n = strlen(msg);
  if (!enif_alloc_binary(n, &bin)) return enif_make_badarg(env);
  memcpy(bin.data, msg, n);
  ERL_NIF_TERM module = kind == EMLX_ERR_MLX ? enif_make_atom(env, "Elixir.EMLX.NIFError") : ATOM.argument_error;
  ERL_NIF_TERM keys[3] = {ATOM.struct_, ATOM.exception, ATOM.message};
  ERL_NIF_TERM vals[3] = {module, ATOM.true_, enif_make_binary(env, &bin)};
  ERL_NIF_TERM map;
  if (!enif_make_map_from_arrays(env, keys, vals, 3, &map)) return enif_make_badarg(env);
  return enif_raise_exception(env, map);
}

/* Raises %ArgumentError{message: ...} from the NIF. */
ERL_NIF_TERM emlx_raise_arg(ErlNifEnv *env, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  enif_vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return emlx_raise_kind(env, EMLX_ERR_ARG, buf);
}

static const struct {
  const char *kind;
  int bits;
} dtype_names[EMLX_DTYPE_COUNT] = {
    {"bool", 8}, {"u", 8},  {"u", 16},  {"u", 32},  {"u", 64},  {"s", 8},  {"s", 16},
    {"s", 32},   {"s", 64}, {"f", 16},  {"bf", 16}, {"f", 32},  {"f", 64}, {"c", 64},
};

int emlx_decode_dtype(ErlNifEnv *env, ERL_NIF_TERM t, int *dtype) {
  if (enif_is_identical(t, ATOM.bool_)) {
    *dtype = EMLX_BOOL;
    return 1;
  }
  int arity;
  const ERL_NIF_TERM *el;
  char kind[8];
  int bits;
  if (!enif_get_tuple(env, t, &arity, &el) || arity != 2) return 0;
  if (enif_get_atom(env, el[0], kind, sizeof kind, ERL_NIF_LATIN1) <= 0) return 0;
  if (!enif_get_int(env, el[1], &bits)) return 0;
  for (int i = 1; i < EMLX_DTYPE_COUNT; i++) {
    if (dtype_names[i].bits == bits && strcmp(dtype_names[i].kind, kind) == 0) {
      *dtype = i;
      return 1;
    }
  }
  return 0;
}

ERL_NIF_TERM emlx_encode_dtype(ErlNifEnv *env, int dtype) {
  if (dtype == EMLX_BOOL) return ATOM.bool_;
  if (dtype < 0 || dtype >= EMLX_DTYPE_COUNT) return ATOM.nil;
  return enif_make_tuple2(env, enif_make_atom(env, dtype_names[dtype].kind), enif_make_int(env, dtype_names[dtype].bits));
}

/* A shape: a tuple or a list of non-negative integers that fit MLX's int32 dims. */
int emlx_decode_dims(ErlNifEnv *env, ERL_NIF_TERM t, int64_t *dims, int *ndim) {
  int arity;
  const ERL_NIF_TERM *el;
  if (enif_get_tuple(env, t, &arity, &el)) {
    if (arity > EMLX_MAX_DIMS) return 0;
    for (int i = 0; i < arity; i++) {
      ErlNifSInt64 v;
      if (!enif_get_int64(env, el[i], &v) || v < 0 || v > INT32_MAX) return 0;
      dims[i] = v;
    }
    *ndim = arity;
    return 1;
  }
  unsigned len;
  if (!enif_get_list_length(env, t, &len) || len > EMLX_MAX_DIMS) return 0;
  ERL_NIF_TERM head, tail = t;
  int i = 0;
  while (enif_get_list_cell(env, tail, &head, &tail)) {
    ErlNifSInt64 v;
    if (!enif_get_int64(env, head, &v) || v < 0 || v > INT32_MAX) return 0;
    dims[i++] = v;
  }
  *ndim = i;
  return 1;
}

ERL_NIF_TERM emlx_encode_dims(ErlNifEnv *env, const int64_t *dims, int ndim) {
  ERL_NIF_TERM el[EMLX_MAX_DIMS];
  for (int i = 0; i < ndim; i++) el[i] = enif_make_int64(env, dims[i]);
  return enif_make_tuple_from_array(env, el, (unsigned)ndim);
}

int emlx_decode_device(ErlNifEnv *env, ERL_NIF_TERM t, emlx_device *dev) {
  (void)env;
  if (enif_is_identical(t, ATOM.cpu)) {
    *dev = EMLX_DEV_CPU;
    return 1;
  }
  if (enif_is_identical(t, ATOM.gpu)) {
    *dev = EMLX_DEV_GPU;
    return 1;
  }
  return 0;
}

static int decode_double(ErlNifEnv *env, ERL_NIF_TERM t, double *out) {
  ErlNifSInt64 i;
  if (enif_get_double(env, t, out)) return 1;
  if (enif_get_int64(env, t, &i)) {
    *out = (double)i;
    return 1;
  }
  if (enif_is_identical(t, ATOM.nan)) {
    *out = NAN;
    return 1;
  }
  if (enif_is_identical(t, ATOM.infinity)) {
    *out = INFINITY;
    return 1;
  }
  if (enif_is_identical(t, ATOM.neg_infinity)) {
    *out = -INFINITY;
    return 1;
  }
  return 0;
}

static int decode_scalar(ErlNifEnv *env, ERL_NIF_TERM t, emlx_scalar *s) {
  ErlNifSInt64 i;
  ErlNifUInt64 u;
  int arity;
  const ERL_NIF_TERM *el;
  memset(s, 0, sizeof *s);
  if (enif_get_int64(env, t, &i)) {
    s->kind = EMLX_SCALAR_INT;
    s->i = i;
    s->re = (double)i;
    return 1;
  }
  if (enif_get_uint64(env, t, &u)) {
    s->kind = EMLX_SCALAR_UINT;
    s->u = u;
    s->re = (double)u;
    return 1;
  }
  if (enif_get_tuple(env, t, &arity, &el) && arity == 2) {
    s->kind = EMLX_SCALAR_COMPLEX;
    return decode_double(env, el[0], &s->re) && decode_double(env, el[1], &s->im);
  }
  s->kind = EMLX_SCALAR_FLOAT;
  return decode_double(env, t, &s->re);
}

void *emlx_job_alloc(emlx_job *job, size_t bytes) {
  emlx_block *b = enif_alloc(sizeof(emlx_block) + bytes + sizeof(max_align_t));
  if (!b) return NULL;
  b->next = job->blocks;
  job->blocks = b;
  return b->data;
}

int emlx_job_hold(emlx_job *job, emlx_arr *a) {
  if (job->nheld == job->cap_held) {
    int cap = job->cap_held ? job->cap_held * 2 : 8;
    emlx_arr **n = enif_realloc(job->held, sizeof(emlx_arr *) * (size_t)cap);
    if (!n) return 0;
    job->held = n;
    job->cap_held = cap;
  }
  job->held[job->nheld++] = a;
  return 1;
}

static void spin_lock(emlx_array_res *r) {
  while (atomic_flag_test_and_set_explicit(&r->lock, memory_order_acquire)) {
  }
}
static void spin_unlock(emlx_array_res *r) { atomic_flag_clear_explicit(&r->lock, memory_order_release); }

emlx_arr *emlx_take_array(ErlNifEnv *env, ERL_NIF_TERM t, emlx_array_res **res_out, int *state_out, int *kind_out,
                          char *err, size_t errlen) {
  emlx_array_res *res;
  *state_out = EMLX_ARR_READY;
  if (!enif_get_resource(env, t, emlx_array_type, (void **)&res)) {
    snprintf(err, errlen, "expected an EMLX array reference");
    return NULL;
  }
  if (res_out) *res_out = res;
  spin_lock(res);
  int state = res->state;
  int dead = state == EMLX_ARR_READY && res->arr == NULL;
  emlx_arr *copy = state == EMLX_ARR_READY && res->arr ? emlx_arr_retain(res->arr) : NULL;
  if (state == EMLX_ARR_FAILED) {
    snprintf(err, errlen, "%s", res->error ? res->error : "the op producing this tensor failed");
    if (kind_out) *kind_out = res->error_kind;
  }
  if (state == EMLX_ARR_PENDING && res->dealloc_requested) dead = 1, state = EMLX_ARR_READY;
  spin_unlock(res);
  *state_out = state;
  if (state == EMLX_ARR_PENDING) {
    snprintf(err, errlen, "the tensor is not computed yet");
    return NULL;
  }
  if (state == EMLX_ARR_FAILED) return NULL;
  if (dead) {
    snprintf(err, errlen, "the tensor has been deallocated");
    return NULL;
  }
  if (!copy) snprintf(err, errlen, "out of memory");
  return copy;
}

static int add_fixup(emlx_job *job, emlx_array_res *res, emlx_arr **slot) {
  if (job->nfixups == job->cap_fixups) {
    int cap = job->cap_fixups ? job->cap_fixups * 2 : 4;
    void *n = enif_realloc(job->fixups, sizeof(*job->fixups) * (size_t)cap);
    if (!n) return 0;
    job->fixups = n;
    job->cap_fixups = cap;
  }
  enif_keep_resource(res);
  job->fixups[job->nfixups].res = res;
  job->fixups[job->nfixups].slot = slot;
  job->nfixups++;
  return 1;
}

/* Fills *slot with a retained handle of the array term, or registers the
 * pending array to be resolved on the worker. An array used on a queue
 * other than its own must already be computed and evaluated: MLX streams
 * are thread-local. A failed array reports its own error (*kind). */
static int take_for_job(ErlNifEnv *env, ERL_NIF_TERM t, emlx_job *job, emlx_arr **slot, int *kind, char *err,
                        size_t errlen) {
  emlx_array_res *res;
  int state;
  *slot = NULL;
  emlx_arr *a = emlx_take_array(env, t, &res, &state, kind, err, errlen);
  if (!a) {
    if (state != EMLX_ARR_PENDING) return 0;
    if (res->owner->q != job->qres->q) {
      snprintf(err, errlen, "a tensor from another command queue must be evaluated before use on this queue");
      return 0;
    }
    if (!add_fixup(job, res, slot)) {
      snprintf(err, errlen, "out of memory");
      return 0;
    }
    return 1;
  }
  if (!emlx_job_hold(job, a)) {
    emlx_arr_free(a);
    snprintf(err, errlen, "out of memory");
    return 0;
  }
  *slot = a;
  if (res->owner->q != job->qres->q && !emlx_arr_is_available(a)) {
    snprintf(err, errlen, "a tensor from another command queue must be evaluated before use on this queue");
    return 0;
  }
  return 1;
}

int emlx_decode_array(ErlNifEnv *env, ERL_NIF_TERM t, emlx_job *job, emlx_arr **slot, char *err, size_t errlen) {
  return take_for_job(env, t, job, slot, &job->error_kind, err, errlen);
}

int emlx_job_resolve(emlx_job *job, int *kind, char *msg, size_t msglen) {
  for (int i = 0; i < job->nfixups; i++) {
    emlx_array_res *res = job->fixups[i].res;
    spin_lock(res);
    int state = res->state;
    emlx_arr *copy = state == EMLX_ARR_READY && res->arr ? emlx_arr_retain(res->arr) : NULL;
    if (state == EMLX_ARR_FAILED) {
      *kind = res->error_kind;
      snprintf(msg, msglen, "%s", res->error ? res->error : "the op producing this tensor failed");
    }
    spin_unlock(res);
    if (state == EMLX_ARR_FAILED) return 0;
    if (!copy) {
      *kind = EMLX_ERR_ARG;
      snprintf(msg, msglen, state == EMLX_ARR_PENDING ? "the tensor is not computed yet" : "the tensor has been deallocated");
      return 0;
    }
    if (!emlx_job_hold(job, copy)) {
      emlx_arr_free(copy);
      *kind = EMLX_ERR_MLX;
      snprintf(msg, msglen, "out of memory");
      return 0;
    }
    *job->fixups[i].slot = copy;
  }
  return 1;
}

void emlx_array_fill(emlx_array_res *res, emlx_arr *a) {
  spin_lock(res);
  int drop = res->dealloc_requested;
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

int emlx_decode_arg(ErlNifEnv *env, ERL_NIF_TERM t, char kind, emlx_job *job, emlx_arg *out, char *err,
                    size_t errlen) {
  out->kind = kind;
  switch (kind) {
    case EMLX_ARG_ARR:
      return take_for_job(env, t, job, &out->u.arr, &job->error_kind, err, errlen);
    case EMLX_ARG_ARRS: {
      unsigned len;
      if (!enif_get_list_length(env, t, &len) || len == 0) {
        snprintf(err, errlen, "expected a non-empty list of arrays");
        return 0;
      }
      emlx_arr **v = emlx_job_alloc(job, sizeof(emlx_arr *) * len);
      if (!v) {
        snprintf(err, errlen, "out of memory");
        return 0;
      }
      ERL_NIF_TERM head, tail = t;
      int n = 0;
      while (enif_get_list_cell(env, tail, &head, &tail)) {
        if (!take_for_job(env, head, job, &v[n], &job->error_kind, err, errlen)) return 0;
        n++;
      }
      out->u.arrs.v = v;
      out->u.arrs.n = n;
      return 1;
    }
    case EMLX_ARG_INT: {
      ErlNifSInt64 v;
      if (enif_is_identical(t, ATOM.nil)) {
        out->u.i = -1;
        return 1;
      }
      if (!enif_get_int64(env, t, &v)) {
        snprintf(err, errlen, "expected an integer");
        return 0;
      }
      out->u.i = v;
      return 1;
    }
    case EMLX_ARG_INTS: {
      unsigned len;
      int arity;
      const ERL_NIF_TERM *el;
      int is_tuple = enif_get_tuple(env, t, &arity, &el);
      if (!is_tuple && !enif_get_list_length(env, t, &len)) {
        snprintf(err, errlen, "expected a list of integers");
        return 0;
      }
      if (is_tuple) len = (unsigned)arity;
      if (len > 4096) {
        snprintf(err, errlen, "list of integers too long");
        return 0;
      }
      int64_t *v = emlx_job_alloc(job, sizeof(int64_t) * (len ? len : 1));
      if (!v) {
        snprintf(err, errlen, "out of memory");
        return 0;
      }
      ERL_NIF_TERM head, tail = t;
      for (unsigned i = 0; i < len; i++) {
        ErlNifSInt64 x;
        if (is_tuple)
          head = el[i];
        else
          enif_get_list_cell(env, tail, &head, &tail);
        if (!enif_get_int64(env, head, &x) || x < INT32_MIN || x > INT32_MAX) {
          snprintf(err, errlen, "expected a list of 32-bit integers");
          return 0;
        }
        v[i] = x;
      }
      out->u.ints.v = v;
      out->u.ints.n = (int)len;
      return 1;
    }
    case EMLX_ARG_FLOAT:
      if (!decode_double(env, t, &out->u.f)) {
        snprintf(err, errlen, "expected a number");
        return 0;
      }
      return 1;
    case EMLX_ARG_DTYPE:
      if (!emlx_decode_dtype(env, t, &out->u.dtype)) {
        snprintf(err, errlen, "expected an element type MLX supports");
        return 0;
      }
      return 1;
    case EMLX_ARG_BOOL:
      if (enif_is_identical(t, ATOM.true_))
        out->u.b = 1;
      else if (enif_is_identical(t, ATOM.false_))
        out->u.b = 0;
      else {
        snprintf(err, errlen, "expected a boolean");
        return 0;
      }
      return 1;
    case EMLX_ARG_SCALAR:
      if (!decode_scalar(env, t, &out->u.scalar)) {
        snprintf(err, errlen, "expected a number");
        return 0;
      }
      return 1;
    default:
      snprintf(err, errlen, "unknown argument kind");
      return 0;
  }
}

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

/* Replaces a live handle under the lock and returns the old one; returns
 * NULL (and keeps nothing) when the tensor was deallocated meanwhile. */
emlx_arr *emlx_array_swap(emlx_array_res *res, emlx_arr *a) {
  spin_lock(res);
  emlx_arr *old = res->arr;
  if (old) res->arr = a;
  spin_unlock(res);
  return old;
}

/* Used by deallocate: takes the handle out under the lock. */
emlx_arr *emlx_array_detach(emlx_array_res *res, int *marked_pending) {
  spin_lock(res);
  emlx_arr *a = res->arr;
  res->arr = NULL;
  *marked_pending = res->state == EMLX_ARR_PENDING && !res->dealloc_requested;
  if (res->state == EMLX_ARR_PENDING) res->dealloc_requested = 1;
  spin_unlock(res);
  return a;
}
