/* Programs (see emlx_programs.c): the NIF functions program_new/4 and
 * program_run/4. */
#ifndef EMLX_PROGRAMS_H
#define EMLX_PROGRAMS_H

#include <erl_nif.h>

ERL_NIF_TERM emlx_nif_program_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM emlx_nif_program_run(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
/* As program_run, but returns the outputs at once, pending (like an op's),
 * or {:wait, outputs} past the backpressure depth; no reply. */
ERL_NIF_TERM emlx_nif_program_post(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

/* The op-table index of an op name atom, or -1 (emlx_nif.c). */
int emlx_find_op(ERL_NIF_TERM name);

#endif
