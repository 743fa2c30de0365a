/* Atoms and resource types, and the resources' destructors. */
#include "emlx_resources.h"

#include "emlx_array.h"
#include "emlx_worker.h"

ErlNifResourceType *emlx_queue_type;
ErlNifResourceType *emlx_array_type;
ErlNifResourceType *emlx_program_type;
ErlNifResourceType *emlx_barrier_type;
emlx_atoms ATOM;

int emlx_get_queue(ErlNifEnv *env, ERL_NIF_TERM t, emlx_queue_res **out) {
  return enif_get_resource(env, t, emlx_queue_type, (void **)out) && (*out)->q != NULL;
}

static void queue_dtor(ErlNifEnv *env, void *obj) {
  (void)env;
  emlx_queue_res *r = obj;
  if (r->q) emlx_queue_stop(r->q);
}

/* An array is dropped on its queue's own thread, as a deallocated one is:
 * the BEAM runs this destructor on whichever scheduler collects the term,
 * and an MLX array freed there raced with the worker, which frees and walks
 * the same graph (a lazy array's inputs, a compiled program's cache): glibc
 * found its heap corrupted ("corrupted size vs. prev_size", in the worker's
 * emlx_compiled_free while a scheduler ran this destructor), in about one of
 * four runs of 1,500 fuzzed defn programs. */
static void array_dtor(ErlNifEnv *env, void *obj) {
  (void)env;
  emlx_array_res *r = obj;
  if (r->arr && r->owner)
    emlx_queue_free_later(r->owner->q, r->arr, NULL);
  else if (r->arr)
    emlx_arr_free(r->arr);
  r->arr = NULL;
  if (r->error) enif_free(r->error);
  if (r->owner) enif_release_resource(r->owner);
}

static void program_dtor(ErlNifEnv *env, void *obj) {
  (void)env;
  emlx_program_res *p = obj;
  /* the compiled replay is dropped on its own thread */
  if (p->prog.compiled && p->owner) emlx_queue_free_later(p->owner->q, NULL, p->prog.compiled);
  if (p->prog.instrs) enif_free(p->prog.instrs);
  if (p->prog.out_slots) enif_free(p->prog.out_slots);
  emlx_arena_free(&p->arena);
  for (int i = 0; i < p->nsubs; i++) enif_release_resource(p->subs[i]);
  if (p->subs) enif_free(p->subs);
  if (p->owner) enif_release_resource(p->owner);
}

static void barrier_dtor(ErlNifEnv *env, void *obj) {
  emlx_barrier_res *b = obj;
  if (!b->env) return;
  enif_send(env, &b->pid, b->env, enif_make_tuple2(b->env, b->ref, ATOM.swept));
  enif_free_env(b->env);
  b->env = NULL;
}

int emlx_resources_load(ErlNifEnv *env) {
  emlx_queue_type = enif_open_resource_type(env, NULL, "emlx_queue", queue_dtor, ERL_NIF_RT_CREATE, NULL);
  emlx_array_type = enif_open_resource_type(env, NULL, "emlx_array", array_dtor, ERL_NIF_RT_CREATE, NULL);
  emlx_program_type = enif_open_resource_type(env, NULL, "emlx_program", program_dtor, ERL_NIF_RT_CREATE, NULL);
  emlx_barrier_type = enif_open_resource_type(env, NULL, "emlx_barrier", barrier_dtor, ERL_NIF_RT_CREATE, NULL);
  if (!emlx_queue_type || !emlx_array_type || !emlx_program_type || !emlx_barrier_type) return 1;

#define A(name) enif_make_atom(env, name)
  ATOM.ok = A("ok");
  ATOM.error = A("error");
  ATOM.nil = A("nil");
  ATOM.true_ = A("true");
  ATOM.false_ = A("false");
  ATOM.cpu = A("cpu");
  ATOM.gpu = A("gpu");
  ATOM.mlx = A("mlx");
  ATOM.argument = A("argument");
  ATOM.nan = A("nan");
  ATOM.infinity = A("infinity");
  ATOM.neg_infinity = A("neg_infinity");
  ATOM.already_deallocated = A("already_deallocated");
  ATOM.bool_ = A("bool");
  ATOM.exception = A("__exception__");
  ATOM.struct_ = A("__struct__");
  ATOM.message = A("message");
  ATOM.argument_error = A("Elixir.ArgumentError");
  ATOM.active_memory = A("active_memory");
  ATOM.peak_memory = A("peak_memory");
  ATOM.cache_memory = A("cache_memory");
  ATOM.wait = A("wait");
  ATOM.pending = A("pending");
  ATOM.swept = A("swept");
  ATOM.while_ = A("while");
  ATOM.cond = A("cond");
#undef A
  return 0;
}
