/* Polled replies (emlx_poll.c): post a job and poll for its reply. */
#ifndef EMLX_POLL_H
#define EMLX_POLL_H

#include "emlx_job.h"

/* Posts the job and polls for its reply for up to its queue's window:
 * returns {:emlx_done, reply}, or past the window the job's reference
 * (the reply then comes as a message, as after emlx_job_submit). */
ERL_NIF_TERM emlx_submit_polled(ErlNifEnv *env, emlx_job *job);
/* At load: the poll resource type and the windows. */
int emlx_poll_load(ErlNifEnv *env);

#endif
