/* Arrays in and out of the VM: binaries and safetensors files.
 *
 *   from_binary(queue, binary, shape, type) returns the array: a small
 *   binary for a CPU queue becomes it right here (a copy into MLX's memory,
 *   which needs no stream); any other is posted, and the array returned
 *   pending, as an op's result
 *   load_safetensors(queue, path) replies {:ok, {[{name, array}], [{key, value}]}}
 *   save_safetensors(queue, path, [{name, array}], [{key, value}]) replies :ok
 *
 * MLX's reader and writer run on the queue's worker thread, like every
 * other piece of MLX work. Names, metadata and the path are binaries; MLX's
 * errors (a missing or malformed file, a failed write) come back as
 * EMLX.NIFError. */
#include "emlx_io.h"

#include <stdio.h>
#include <string.h>

#include "emlx_codec.h"

/* A binary without NUL bytes, copied NUL-terminated into the arena. */
static const char *arena_string(ErlNifEnv *env, ERL_NIF_TERM t, emlx_arena *arena) {
  ErlNifBinary bin;
  if (!enif_inspect_binary(env, t, &bin) || memchr(bin.data, 0, bin.size)) return NULL;
  char *s = emlx_arena_alloc(arena, bin.size + 1);
  if (!s) return NULL;
  memcpy(s, bin.data, bin.size);
  s[bin.size] = 0;
  return s;
}

/* A new job on the queue of argv[0] with the path of argv[1]; NULL after
 * raising in *raised. */
static emlx_job *file_job(ErlNifEnv *env, const ERL_NIF_TERM argv[], emlx_job_kind kind, const char **path,
                          ERL_NIF_TERM *raised) {
  emlx_job *job = emlx_job_for_queue(env, argv[0], kind, raised);
  if (!job) return NULL;
  *path = arena_string(env, argv[1], &job->arena);
  if (!*path || !**path) {
    *raised = emlx_job_fail(env, job, "the path must be a non-empty binary without NUL bytes");
    return NULL;
  }
  return job;
}

ERL_NIF_TERM emlx_nif_load_safetensors(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  ERL_NIF_TERM raised;
  const char *path;
  emlx_job *job = file_job(env, argv, EMLX_JOB_LOAD_SAFETENSORS, &path, &raised);
  if (!job) return raised;
  job->load.path = path;
  return emlx_job_submit(env, job);
}

/* Decodes a list of {binary, value} pairs: the keys into *keys, and each
 * value as an array into *arrs (when arrs is given) or as a string into
 * *strs, all in the job's arena. */
static int decode_pairs(ErlNifEnv *env, ERL_NIF_TERM list, emlx_job *job, const char ***keys, emlx_arr ***arrs,
                        const char ***strs, int *n, char *err, size_t errlen) {
  unsigned len;
  if (!enif_get_list_length(env, list, &len) || len > 1000000) {
    snprintf(err, errlen, "expected a list of {name, value} pairs");
    return 0;
  }
  size_t cap = len ? len : 1;
  *keys = emlx_arena_alloc(&job->arena, sizeof(char *) * cap);
  if (arrs)
    *arrs = emlx_arena_alloc(&job->arena, sizeof(emlx_arr *) * cap);
  else
    *strs = emlx_arena_alloc(&job->arena, sizeof(char *) * cap);
  if (!*keys || (arrs ? !*arrs : !*strs)) {
    snprintf(err, errlen, "out of memory");
    return 0;
  }
  ERL_NIF_TERM head, tail = list;
  for (unsigned i = 0; i < len; i++) {
    int arity;
    const ERL_NIF_TERM *el;
    enif_get_list_cell(env, tail, &head, &tail);
    if (!enif_get_tuple(env, head, &arity, &el) || arity != 2) {
      snprintf(err, errlen, "expected a list of {name, value} pairs");
      return 0;
    }
    (*keys)[i] = arena_string(env, el[0], &job->arena);
    if (!(*keys)[i]) {
      snprintf(err, errlen, "names and metadata keys must be binaries without NUL bytes");
      return 0;
    }
    if (arrs) {
      if (!emlx_job_take_array(env, el[1], job, &(*arrs)[i], err, errlen)) return 0;
    } else if (!((*strs)[i] = arena_string(env, el[1], &job->arena))) {
      snprintf(err, errlen, "metadata values must be binaries without NUL bytes");
      return 0;
    }
  }
  *n = (int)len;
  return 1;
}

ERL_NIF_TERM emlx_nif_save_safetensors(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  ERL_NIF_TERM raised;
  const char *path;
  emlx_job *job = file_job(env, argv, EMLX_JOB_SAVE_SAFETENSORS, &path, &raised);
  if (!job) return raised;
  emlx_save_job *sv = &job->save;
  sv->path = path;
  char err[256];
  if (!decode_pairs(env, argv[2], job, &sv->names, &sv->arrs, NULL, &sv->n, err, sizeof err) ||
      !decode_pairs(env, argv[3], job, &sv->meta_keys, NULL, &sv->meta_values, &sv->nmeta, err, sizeof err))
    return emlx_job_fail(env, job, err);
  return emlx_job_submit(env, job);
}

/* ---- on the worker ---- */

static ERL_NIF_TERM make_binary(ErlNifEnv *env, const char *s, int *ok) {
  ERL_NIF_TERM t;
  if (emlx_encode_string(env, s, &t)) return t;
  *ok = 0;
  return ATOM.nil;
}

void emlx_run_load_safetensors(emlx_queue *q, emlx_job *job) {
  emlx_tensor_file *file;
  emlx_status st = emlx_load_safetensors(q->stream, job->load.path, &file);
  if (st != EMLX_OK) {
    emlx_reply_error(job, st);
    return;
  }
  ErlNifEnv *env = job->env;
  int ok = 1;
  ERL_NIF_TERM arrays = enif_make_list(env, 0), meta = enif_make_list(env, 0);
  for (int i = emlx_tensor_file_count(file) - 1; ok && i >= 0; i--) {
    emlx_arr *a = emlx_tensor_file_array(file, i);
    ERL_NIF_TERM t = a ? emlx_make_array(env, job->qres, a) : 0;
    if (!t) {
      ok = 0;
      break;
    }
    ERL_NIF_TERM name = make_binary(env, emlx_tensor_file_name(file, i), &ok);
    arrays = enif_make_list_cell(env, enif_make_tuple2(env, name, t), arrays);
  }
  for (int i = emlx_tensor_file_meta_count(file) - 1; ok && i >= 0; i--) {
    ERL_NIF_TERM k = make_binary(env, emlx_tensor_file_meta_key(file, i), &ok);
    ERL_NIF_TERM v = make_binary(env, emlx_tensor_file_meta_value(file, i), &ok);
    meta = enif_make_list_cell(env, enif_make_tuple2(env, k, v), meta);
  }
  emlx_tensor_file_free(file);
  if (ok)
    emlx_reply_ok(job, enif_make_tuple2(env, arrays, meta));
  else
    emlx_reply_oom(job);
}

void emlx_run_save_safetensors(emlx_queue *q, emlx_job *job) {
  emlx_save_job *sv = &job->save;
  emlx_reply_status(job, emlx_save_safetensors(q->stream, sv->path, sv->names, sv->arrs, sv->n, sv->meta_keys,
                                               sv->meta_values, sv->nmeta));
}

/* ---- binaries ---- */

/* A binary of at most this many bytes for a CPU queue becomes its array
 * right here: a copy into MLX's memory, no job and no wait. Larger ones, and
 * every one for a GPU queue, are posted. */
#define INLINE_FROM_BINARY_BYTES (64u * 1024u)

ERL_NIF_TERM emlx_nif_from_binary(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  emlx_queue_res *qr;
  if (!emlx_get_queue(env, argv[0], &qr)) return emlx_raise_arg(env, "expected a command queue reference");
  ErlNifBinary bin;
  if (!enif_inspect_binary(env, argv[1], &bin)) return emlx_raise_arg(env, "expected a binary");
  emlx_array_spec spec;
  const char *bad = emlx_decode_spec(env, argv[2], argv[3], &spec);
  if (bad) return emlx_raise_arg(env, "%s", bad);
  size_t count;
  if (!emlx_spec_count(&spec, &count)) return emlx_raise_arg(env, "shape too large");
  size_t isz = emlx_dtype_size(spec.dtype);
  if (count > SIZE_MAX / isz || count * isz != bin.size) {
    char msg[200];
    snprintf(msg, sizeof msg, "binary of %zu bytes does not match the shape and type (%zu bytes expected)", bin.size,
             count > SIZE_MAX / isz ? SIZE_MAX : count * isz);
    return emlx_raise_arg(env, "%s", msg);
  }

  if (qr->q->device == EMLX_DEV_CPU && bin.size <= INLINE_FROM_BINARY_BYTES) {
    emlx_arr *out;
    emlx_status st = emlx_arr_from_bytes(NULL, bin.data, bin.size, spec.dims, spec.ndim, spec.dtype, &out);
    if (st != EMLX_OK) return emlx_raise_kind(env, st, emlx_last_error());
    ERL_NIF_TERM t = emlx_make_array(env, qr, out);
    return t ? t : emlx_raise_arg(env, "out of memory");
  }

  emlx_job *job = emlx_job_new(EMLX_JOB_FROM_BINARY, qr);
  if (!job) return emlx_raise_arg(env, "out of memory");
  emlx_from_binary_job *fb = &job->from_binary;
  fb->spec = spec;
  ERL_NIF_TERM copy = enif_make_copy(job->env, argv[1]); /* refc binaries are shared, not copied */
  if (!enif_inspect_binary(job->env, copy, &bin)) return emlx_job_fail(env, job, "expected a binary");
  fb->data = bin.data;
  fb->nbytes = bin.size;
  /* The array exists now, pending, as an op's result: the caller goes on
   * while the worker copies the bytes in (queue order). */
  ERL_NIF_TERM term;
  if (!emlx_job_pending_results(env, job, &fb->result, &fb->nresult, &term, 1))
    return emlx_job_fail(env, job, "out of memory");
  return emlx_job_post_pending(env, job, term);
}

/* Fills the pending array; on error it records the error. */
void emlx_run_from_binary(emlx_queue *q, emlx_job *job) {
  emlx_from_binary_job *fb = &job->from_binary;
  emlx_arr *out;
  emlx_status st = emlx_arr_from_bytes(q->stream, fb->data, fb->nbytes, fb->spec.dims, fb->spec.ndim, fb->spec.dtype, &out);
  if (st == EMLX_OK)
    emlx_array_fill(fb->result, out);
  else
    emlx_array_fail(fb->result, st, emlx_last_error());
}
