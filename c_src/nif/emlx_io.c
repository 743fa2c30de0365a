/* Safetensors files through MLX's own reader and writer, on the queue's
 * worker thread like every other piece of MLX work.
 *
 *   load_safetensors(queue, path) replies {:ok, {[{name, array}], [{key, value}]}}
 *   save_safetensors(queue, path, [{name, array}], [{key, value}]) replies :ok
 *
 * Names, metadata and the path are binaries; MLX's errors (a missing or
 * malformed file, a failed write) come back as EMLX.NIFError. */
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
  emlx_queue_res *qr;
  if (!enif_get_resource(env, argv[0], emlx_queue_type, (void **)&qr) || qr->q == NULL) {
    *raised = emlx_raise_arg(env, "expected a command queue reference");
    return NULL;
  }
  emlx_job *job = emlx_job_new(kind, qr);
  if (!job) {
    *raised = emlx_raise_arg(env, "out of memory");
    return NULL;
  }
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
