/* Arrays in and out: the NIF functions (decoded on the scheduler) and the
 * job bodies (run on the queue's worker) of from_binary/4,
 * load_safetensors/2 and save_safetensors/4. */
#ifndef EMLX_IO_H
#define EMLX_IO_H

#include <erl_nif.h>

#include "emlx_worker.h"

ERL_NIF_TERM emlx_nif_from_binary(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM emlx_nif_load_safetensors(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM emlx_nif_save_safetensors(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

void emlx_run_from_binary(emlx_queue *q, emlx_job *job);
void emlx_run_load_safetensors(emlx_queue *q, emlx_job *job);
void emlx_run_save_safetensors(emlx_queue *q, emlx_job *job);

#endif
