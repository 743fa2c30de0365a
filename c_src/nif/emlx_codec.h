/* The term codec: shapes, element types, devices, numbers and op arguments
 * between Erlang terms and the shim's C values, and the exceptions the NIF
 * raises. Pure: it reads terms and writes C values (lists into an arena);
 * arrays are decoded by the job (emlx_job.h). */
#ifndef EMLX_CODEC_H
#define EMLX_CODEC_H

#include <erl_nif.h>
#include <stddef.h>
#include <stdint.h>

#include "emlx_arena.h"
#include "emlx_shim.h"

/* Raises %ArgumentError{} (EMLX_ERR_ARG) or %EMLX.NIFError{} (EMLX_ERR_MLX). */
ERL_NIF_TERM emlx_raise_kind(ErlNifEnv *env, int kind, const char *msg);
/* Raises %ArgumentError{} with a message formatted as enif_snprintf does. */
ERL_NIF_TERM emlx_raise_arg(ErlNifEnv *env, const char *fmt, ...);
/* A binary with the string's bytes; 0 when out of memory. */
int emlx_encode_string(ErlNifEnv *env, const char *s, ERL_NIF_TERM *out);

/* Makes the atoms the codec matches by identity (once, at load). */
void emlx_codec_load(ErlNifEnv *env);
/* Copies a fixed message into err (no format: the hot paths use it). */
void emlx_set_err(char *err, size_t errlen, const char *msg);
int emlx_decode_dtype(ErlNifEnv *env, ERL_NIF_TERM t, int *dtype);
ERL_NIF_TERM emlx_encode_dtype(ErlNifEnv *env, int dtype);
int emlx_decode_dims(ErlNifEnv *env, ERL_NIF_TERM t, int64_t *dims, int *ndim);
ERL_NIF_TERM emlx_encode_dims(ErlNifEnv *env, const int64_t *dims, int ndim);
int emlx_decode_device(ErlNifEnv *env, ERL_NIF_TERM t, emlx_device *dev);

/* A new array's shape and element type. */
typedef struct {
  int64_t dims[EMLX_MAX_DIMS];
  int ndim;
  int dtype;
} emlx_array_spec;

/* Decodes a shape and an element type; on failure returns the message. */
const char *emlx_decode_spec(ErlNifEnv *env, ERL_NIF_TERM shape, ERL_NIF_TERM type, emlx_array_spec *spec);
/* The spec's element count; 0 when it does not fit a size_t. */
int emlx_spec_count(const emlx_array_spec *spec, size_t *count);

/* Decodes one op argument that is not an array (any kind but 'a' and 'A')
 * into *out, lists into the arena; on failure writes a message to err. */
int emlx_decode_value(ErlNifEnv *env, ERL_NIF_TERM t, char kind, emlx_arena *arena, emlx_arg *out, char *err,
                      size_t errlen);
/* Decodes an array argument of a program instruction: a slot number ('a',
 * in out->u.i) or a non-empty list of them ('A', in out->u.ints). */
int emlx_decode_slots(ErlNifEnv *env, ERL_NIF_TERM t, char kind, emlx_arena *arena, emlx_arg *out);

#endif
