/* Pointers: to_pointer/4, from_pointer/4 and shm_unlink/1 (decoded on
 * the scheduler) and the job bodies of TO_POINTER and FROM_POINTER (run on
 * the queue's worker). */
#ifndef EMLX_POINTER_H
#define EMLX_POINTER_H

#include <erl_nif.h>

#include "emlx_worker.h"

ERL_NIF_TERM emlx_nif_to_pointer(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM emlx_nif_from_pointer(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM emlx_nif_shm_unlink(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

void emlx_run_to_pointer(emlx_queue *q, emlx_job *job);
void emlx_run_from_pointer(emlx_queue *q, emlx_job *job);

#endif
