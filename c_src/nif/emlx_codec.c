/* The term codec. Every check on a term happens here, on the calling
 * scheduler, before MLX sees anything. */
#include "emlx_codec.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "emlx_resources.h"

int emlx_encode_string(ErlNifEnv *env, const char *s, ERL_NIF_TERM *out) {
  ErlNifBinary bin;
  size_t n = strlen(s);
  if (!enif_alloc_binary(n, &bin)) return 0;
  memcpy(bin.data, s, n);
  *out = enif_make_binary(env, &bin);
  return 1;
}

ERL_NIF_TERM emlx_raise_kind(ErlNifEnv *env, int kind, const char *msg) {
  ERL_NIF_TERM text;
  if (!emlx_encode_string(env, msg, &text)) return enif_make_badarg(env);
  ERL_NIF_TERM module = kind == EMLX_ERR_MLX ? enif_make_atom(env, "Elixir.EMLX.NIFError") : ATOM.argument_error;
  ERL_NIF_TERM keys[3] = {ATOM.struct_, ATOM.exception, ATOM.message};
  ERL_NIF_TERM vals[3] = {module, ATOM.true_, text};
  ERL_NIF_TERM map;
  if (!enif_make_map_from_arrays(env, keys, vals, 3, &map)) return enif_make_badarg(env);
  return enif_raise_exception(env, map);
}

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

/* The kinds' atoms, made at load: an op's output type (decoded at every
 * eager op) is matched by atom identity, with no copy of the atom's name. */
static ERL_NIF_TERM dtype_kinds[EMLX_DTYPE_COUNT];

void emlx_codec_load(ErlNifEnv *env) {
  for (int i = 0; i < EMLX_DTYPE_COUNT; i++) dtype_kinds[i] = enif_make_atom(env, dtype_names[i].kind);
}

void emlx_set_err(char *err, size_t errlen, const char *msg) {
  if (!errlen) return;
  size_t n = strlen(msg);
  if (n >= errlen) n = errlen - 1;
  memcpy(err, msg, n);
  err[n] = 0;
}

int emlx_decode_dtype(ErlNifEnv *env, ERL_NIF_TERM t, int *dtype) {
  if (enif_is_identical(t, ATOM.bool_)) {
    *dtype = EMLX_BOOL;
    return 1;
  }
  int arity;
  const ERL_NIF_TERM *el;
  int bits;
  if (!enif_get_tuple(env, t, &arity, &el) || arity != 2) return 0;
  if (!enif_get_int(env, el[1], &bits)) return 0;
  for (int i = 1; i < EMLX_DTYPE_COUNT; i++) {
    if (dtype_names[i].bits == bits && enif_is_identical(dtype_kinds[i], el[0])) {
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
  if (enif_is_identical(t, ATOM.cpu))
    *dev = EMLX_DEV_CPU;
  else if (enif_is_identical(t, ATOM.gpu))
    *dev = EMLX_DEV_GPU;
  else
    return 0;
  return 1;
}

const char *emlx_decode_spec(ErlNifEnv *env, ERL_NIF_TERM shape, ERL_NIF_TERM type, emlx_array_spec *spec) {
  if (!emlx_decode_dims(env, shape, spec->dims, &spec->ndim)) return "invalid shape";
  if (!emlx_decode_dtype(env, type, &spec->dtype)) return "the type is not one MLX supports";
  return NULL;
}

int emlx_spec_count(const emlx_array_spec *spec, size_t *count) {
  size_t n = 1;
  for (int i = 0; i < spec->ndim; i++) {
    if (spec->dims[i] != 0 && n > SIZE_MAX / (size_t)spec->dims[i]) return 0;
    n *= (size_t)spec->dims[i];
  }
  *count = n;
  return 1;
}

/* A number: a float, an integer, or :nan, :infinity, :neg_infinity. */
static int decode_double(ErlNifEnv *env, ERL_NIF_TERM t, double *out) {
  const struct {
    ERL_NIF_TERM atom;
    double value;
  } named[] = {{ATOM.nan, NAN}, {ATOM.infinity, INFINITY}, {ATOM.neg_infinity, -INFINITY}};
  ErlNifSInt64 i;
  if (enif_get_double(env, t, out)) return 1;
  if (enif_get_int64(env, t, &i)) {
    *out = (double)i;
    return 1;
  }
  for (size_t k = 0; k < sizeof named / sizeof named[0]; k++) {
    if (enif_is_identical(t, named[k].atom)) {
      *out = named[k].value;
      return 1;
    }
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

enum { INTS_OK, INTS_NOT_A_LIST, INTS_TOO_LONG, INTS_NO_MEMORY, INTS_OUT_OF_RANGE };

/* A list (or, with tuple_ok, a tuple) of at most 4096 integers in [lo, hi],
 * into the arena. Returns INTS_OK or what was wrong. */
static int decode_int_list(ErlNifEnv *env, ERL_NIF_TERM t, int tuple_ok, int64_t lo, int64_t hi, emlx_arena *arena,
                           int64_t **out, int *n) {
  unsigned len;
  int arity;
  const ERL_NIF_TERM *el;
  int is_tuple = tuple_ok && enif_get_tuple(env, t, &arity, &el);
  if (!is_tuple && !enif_get_list_length(env, t, &len)) return INTS_NOT_A_LIST;
  if (is_tuple) len = (unsigned)arity;
  if (len > 4096) return INTS_TOO_LONG;
  int64_t *v = emlx_arena_alloc(arena, sizeof(int64_t) * (len ? len : 1));
  if (!v) return INTS_NO_MEMORY;
  ERL_NIF_TERM head, tail = t;
  for (unsigned i = 0; i < len; i++) {
    ErlNifSInt64 x;
    if (is_tuple)
      head = el[i];
    else
      enif_get_list_cell(env, tail, &head, &tail);
    if (!enif_get_int64(env, head, &x) || x < lo || x > hi) return INTS_OUT_OF_RANGE;
    v[i] = x;
  }
  *out = v;
  *n = (int)len;
  return INTS_OK;
}

int emlx_decode_value(ErlNifEnv *env, ERL_NIF_TERM t, char kind, emlx_arena *arena, emlx_arg *out, char *err,
                      size_t errlen) {
  static const char *const bad_ints[] = {
      [INTS_NOT_A_LIST] = "expected a list of integers",
      [INTS_TOO_LONG] = "list of integers too long",
      [INTS_NO_MEMORY] = "out of memory",
      [INTS_OUT_OF_RANGE] = "expected a list of 32-bit integers",
  };
  const char *why;
  out->kind = kind;
  switch (kind) {
    case EMLX_ARG_INT: {
      ErlNifSInt64 v = -1; /* nil */
      if (enif_is_identical(t, ATOM.nil) || enif_get_int64(env, t, &v)) {
        out->u.i = v;
        return 1;
      }
      why = "expected an integer";
      break;
    }
    case EMLX_ARG_INTS: {
      int st = decode_int_list(env, t, 1, INT32_MIN, INT32_MAX, arena, &out->u.ints.v, &out->u.ints.n);
      if (st == INTS_OK) return 1;
      why = bad_ints[st];
      break;
    }
    case EMLX_ARG_FLOAT:
    case EMLX_ARG_SCALAR:
      if (kind == EMLX_ARG_FLOAT ? decode_double(env, t, &out->u.f) : decode_scalar(env, t, &out->u.scalar)) return 1;
      why = "expected a number";
      break;
    case EMLX_ARG_DTYPE:
      if (emlx_decode_dtype(env, t, &out->u.dtype)) return 1;
      why = "expected an element type MLX supports";
      break;
    case EMLX_ARG_BOOL:
      if (enif_is_identical(t, ATOM.true_) || enif_is_identical(t, ATOM.false_)) {
        out->u.b = enif_is_identical(t, ATOM.true_);
        return 1;
      }
      why = "expected a boolean";
      break;
    default:
      why = "unknown argument kind";
      break;
  }
  emlx_set_err(err, errlen, why);
  return 0;
}

int emlx_decode_slots(ErlNifEnv *env, ERL_NIF_TERM t, char kind, emlx_arena *arena, emlx_arg *out) {
  out->kind = kind;
  if (kind == EMLX_ARG_ARR) {
    ErlNifSInt64 v;
    if (!enif_get_int64(env, t, &v) || v < 0 || v > INT32_MAX) return 0;
    out->u.i = v;
    return 1;
  }
  return decode_int_list(env, t, 0, 0, INT32_MAX, arena, &out->u.ints.v, &out->u.ints.n) == INTS_OK &&
         out->u.ints.n > 0;
}
