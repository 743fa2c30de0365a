/* Programs: program_new/4 decodes a recorded program (op-table
 * instructions over slots, and the loop and cond instructions that run
 * programs of their own: see emlx_program_run in emlx_shim.h) into a
 * resource of its queue; program_run/4 posts a run of it and replies with
 * the outputs, program_post/4 returns them at once, pending. */
#include "emlx_programs.h"

#include <stdio.h>
#include <string.h>

#include "emlx_codec.h"
#include "emlx_job.h"
#include "emlx_resources.h"

/* Keeps sub-program q alive as long as program p. */
static int keep_sub(emlx_program_res *p, emlx_program_res *q) {
  emlx_program_res **subs = enif_realloc(p->subs, sizeof *subs * (size_t)(p->nsubs + 1));
  if (!subs) return 0;
  p->subs = subs;
  enif_keep_resource(q);
  p->subs[p->nsubs++] = q;
  return 1;
}

/* Decodes a control instruction's args of the given kinds: programs ('p')
 * of this queue, kept by p, and lists of integers ('I'). NULL or what is wrong. */
static const char *decode_control(ErlNifEnv *env, ERL_NIF_TERM list, const char *kinds, emlx_program_res *p,
                                  emlx_instr *in, char *err, size_t errlen) {
  unsigned len, n = (unsigned)strlen(kinds);
  if (!enif_get_list_length(env, list, &len) || len != n) return "wrong number of arguments";
  ERL_NIF_TERM head, tail = list;
  for (unsigned k = 0; k < n; k++) {
    enif_get_list_cell(env, tail, &head, &tail);
    in->args[k].kind = kinds[k];
    if (kinds[k] == EMLX_ARG_INTS) {
      if (!emlx_decode_value(env, head, EMLX_ARG_INTS, &p->arena, &in->args[k], err, errlen)) return err;
      continue;
    }
    emlx_program_res *q;
    if (!enif_get_resource(env, head, emlx_program_type, (void **)&q) || !q->prog.instrs)
      return "expected an EMLX program";
    if (q->owner->q != p->owner->q) return "its programs must run on the command queue of the program";
    if (!keep_sub(p, q)) return "out of memory";
    in->args[k].u.prog = &q->prog;
  }
  in->nargs = (int)n;
  p->prog.plain = 1;
  return NULL;
}

/* A loop: [state_slots, cond, cond_inputs, body, body_inputs] (see
 * EMLX_OP_WHILE in emlx_shim.h). Returns NULL or what is wrong. */
static const char *decode_while(ErlNifEnv *env, ERL_NIF_TERM list, emlx_program_res *p, emlx_instr *in, char *err,
                                size_t errlen) {
  const char *why = decode_control(env, list, "IpIpI", p, in, err, errlen);
  if (why) return why;
  int n = in->args[0].u.ints.n;
  for (int j = 0; j < n; j++)
    if (in->args[0].u.ints.v[j] < 0) return "a loop's state slots must be non-negative";
  for (int k = 2; k <= 4; k += 2)
    for (int j = 0; j < in->args[k].u.ints.n; j++)
      if (in->args[k].u.ints.v[j] < -n) return "a loop input names a state element past the state";
  const emlx_program *cond = in->args[1].u.prog, *body = in->args[3].u.prog;
  if (cond->ninputs != in->args[2].u.ints.n || body->ninputs != in->args[4].u.ints.n)
    return "a loop program's input count differs from its input list";
  if (cond->nouts != 1 || body->nouts != n) return "a loop's condition returns 1 array and its body the state";
  in->op = EMLX_OP_WHILE;
  return NULL;
}

/* A cond: [pred, pred_inputs, then, then_inputs, else, else_inputs] (see
 * EMLX_OP_COND in emlx_shim.h). Returns NULL or what is wrong. */
static const char *decode_cond(ErlNifEnv *env, ERL_NIF_TERM list, emlx_program_res *p, emlx_instr *in, char *err,
                               size_t errlen) {
  const char *why = decode_control(env, list, "pIpIpI", p, in, err, errlen);
  if (why) return why;
  for (int k = 1; k <= 5; k += 2) {
    if (in->args[k - 1].u.prog->ninputs != in->args[k].u.ints.n)
      return "a cond program's input count differs from its input list";
    for (int j = 0; j < in->args[k].u.ints.n; j++)
      if (in->args[k].u.ints.v[j] < 0) return "a cond's input slots must be non-negative";
  }
  if (in->args[0].u.prog->nouts != 1) return "a cond's predicate returns 1 array";
  if (in->args[2].u.prog->nouts != in->args[4].u.prog->nouts) return "a cond's branches return as many arrays";
  in->op = EMLX_OP_COND;
  return NULL;
}

/* program_new(queue, [{op, args, out_type}], ninputs, out_slots); op may be
 * :while, a loop (see decode_while), or :cond (decode_cond) */
ERL_NIF_TERM emlx_nif_program_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  emlx_queue_res *qr;
  if (!emlx_get_queue(env, argv[0], &qr)) return emlx_raise_arg(env, "expected a command queue reference");
  unsigned n, nouts;
  int ninputs;
  if (!enif_get_list_length(env, argv[1], &n) || n > 1000000) return emlx_raise_arg(env, "expected a list of instructions");
  if (!enif_get_int(env, argv[2], &ninputs) || ninputs < 0) return emlx_raise_arg(env, "expected the number of inputs");
  if (!enif_get_list_length(env, argv[3], &nouts) || nouts > 100000) return emlx_raise_arg(env, "expected a list of output slots");

  emlx_program_res *p = enif_alloc_resource(emlx_program_type, sizeof(emlx_program_res));
  if (!p) return emlx_raise_arg(env, "out of memory");
  memset(p, 0, sizeof *p);
  p->owner = qr;
  enif_keep_resource(qr);
  ERL_NIF_TERM term = enif_make_resource(env, p);
  enif_release_resource(p); /* the term owns it now; a raise below frees it */

  emlx_program *prog = &p->prog;
  prog->instrs = enif_alloc(sizeof(emlx_instr) * (n ? n : 1));
  prog->out_slots = enif_alloc(sizeof(int) * (nouts ? nouts : 1));
  if (!prog->instrs || !prog->out_slots) return emlx_raise_arg(env, "out of memory");
  prog->ninputs = ninputs;

  ERL_NIF_TERM head, tail = argv[3];
  for (unsigned i = 0; i < nouts; i++) {
    enif_get_list_cell(env, tail, &head, &tail);
    if (!enif_get_int(env, head, &prog->out_slots[i]) || prog->out_slots[i] < 0)
      return emlx_raise_arg(env, "output slots must be non-negative integers");
  }
  prog->nouts = (int)nouts;

  tail = argv[1];
  char err[256];
  for (unsigned i = 0; i < n; i++) {
    int arity;
    const ERL_NIF_TERM *el;
    emlx_instr *in = &prog->instrs[i];
    enif_get_list_cell(env, tail, &head, &tail);
    if (!enif_get_tuple(env, head, &arity, &el) || arity != 3)
      return emlx_raise_arg(env, "instruction %u: expected {op, args, out_type}", i);
    in->out_dtype = -1;
    if (enif_is_identical(el[0], ATOM.while_) || enif_is_identical(el[0], ATOM.cond)) {
      int loop = enif_is_identical(el[0], ATOM.while_);
      const char *why = loop ? decode_while(env, el[1], p, in, err, sizeof err)
                             : decode_cond(env, el[1], p, in, err, sizeof err);
      if (why) return emlx_raise_arg(env, "instruction %u (%s): %s", i, loop ? "while" : "cond", why);
      prog->ninstrs = (int)i + 1;
      continue;
    }
    in->op = emlx_find_op(el[0]);
    if (in->op < 0) return emlx_raise_arg(env, "instruction %u: unknown EMLX op %T", i, el[0]);
    /* A collective (EMLX.Distributed) checks the ranks' types and shapes at
     * every call, on the host: a program holding one is never traced by
     * mx::compile, whose cached trace would skip the check on some ranks. */
    if (strncmp(emlx_op_name(in->op), "dist_", 5) == 0) p->prog.plain = 1;
    const char *sig = emlx_op_signature(in->op);
    int nsig = (int)strlen(sig);
    unsigned len;
    if (!enif_get_list_length(env, el[1], &len) || (int)len != nsig)
      return emlx_raise_arg(env, "instruction %u: op %s expects %d arguments", i, emlx_op_name(in->op), nsig);
    if (!enif_is_identical(el[2], ATOM.nil) && !emlx_decode_dtype(env, el[2], &in->out_dtype))
      return emlx_raise_arg(env, "instruction %u: the output type is not one MLX supports", i);
    ERL_NIF_TERM ah, at = el[1];
    for (int k = 0; k < nsig; k++) {
      enif_get_list_cell(env, at, &ah, &at);
      int ok = (sig[k] == EMLX_ARG_ARR || sig[k] == EMLX_ARG_ARRS)
                   ? emlx_decode_slots(env, ah, sig[k], &p->arena, &in->args[k])
                   : emlx_decode_value(env, ah, sig[k], &p->arena, &in->args[k], err, sizeof err);
      if (!ok) {
        if (sig[k] == EMLX_ARG_ARR || sig[k] == EMLX_ARG_ARRS) snprintf(err, sizeof err, "expected a slot number");
        return emlx_raise_arg(env, "instruction %u (%s), argument %d: %s", i, emlx_op_name(in->op), k + 1, err);
      }
    }
    in->nargs = nsig;
    prog->ninstrs = (int)i + 1;
  }
  return term;
}

/* A program job from program_run's or program_post's arguments (queue,
 * program, inputs, compile?); NULL with *raised set when they are wrong. */
static emlx_job *program_job(ErlNifEnv *env, const ERL_NIF_TERM argv[], ERL_NIF_TERM *raised) {
  emlx_queue_res *qr;
  emlx_program_res *p;
  if (!emlx_get_queue(env, argv[0], &qr)) {
    *raised = emlx_raise_arg(env, "expected a command queue reference");
    return NULL;
  }
  if (!enif_get_resource(env, argv[1], emlx_program_type, (void **)&p) || !p->prog.instrs) {
    *raised = emlx_raise_arg(env, "expected an EMLX program");
    return NULL;
  }
  if (p->owner->q != qr->q) {
    *raised = emlx_raise_arg(env, "a program runs on the command queue it was made for");
    return NULL;
  }
  unsigned len;
  if (!enif_get_list_length(env, argv[2], &len) || (int)len != p->prog.ninputs) {
    *raised = emlx_raise_arg(env, "the program expects %d inputs", p->prog.ninputs);
    return NULL;
  }
  emlx_job *job = emlx_job_new(EMLX_JOB_PROGRAM, qr);
  if (!job) {
    *raised = emlx_raise_arg(env, "out of memory");
    return NULL;
  }
  job->program.res = p;
  enif_keep_resource(p);
  job->program.compile = enif_is_identical(argv[3], ATOM.true_);
  char err[256];
  if (!emlx_job_take_arrays(env, argv[2], job, 0, &job->program.inputs, &job->program.ninputs, err, sizeof err)) {
    *raised = emlx_job_fail(env, job, err);
    return NULL;
  }
  return job;
}

ERL_NIF_TERM emlx_nif_program_run(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  ERL_NIF_TERM raised;
  emlx_job *job = program_job(env, argv, &raised);
  return job ? emlx_job_submit(env, job) : raised;
}

ERL_NIF_TERM emlx_nif_program_post(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  ERL_NIF_TERM raised;
  emlx_job *job = program_job(env, argv, &raised);
  if (!job) return raised;
  int nouts = job->program.res->prog.nouts;
  job->program.results = enif_alloc(sizeof(emlx_array_res *) * (size_t)(nouts ? nouts : 1));
  ERL_NIF_TERM *terms = enif_alloc(sizeof(ERL_NIF_TERM) * (size_t)(nouts ? nouts : 1));
  int made = job->program.results && terms &&
             emlx_job_pending_results(env, job, job->program.results, &job->program.nresults, terms, nouts);
  ERL_NIF_TERM list = made ? enif_make_list_from_array(env, terms, (unsigned)nouts) : 0;
  if (terms) enif_free(terms);
  if (!made) return emlx_job_fail(env, job, "out of memory");
  return emlx_job_post_pending(env, job, list);
}
