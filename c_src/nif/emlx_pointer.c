/* Pointers: a tensor's memory handed to other code of this process
 * (:local, the buffer's address) or to another OS process (:ipc, a POSIX
 * shared-memory segment), and arrays made from such memory. The NIF
 * functions decode on the scheduler; the job bodies run on the queue's
 * worker. */
#include "emlx_pointer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "emlx_codec.h"

/* ---- on the scheduler ---- */

static int valid_shm_name(const char *name) {
  if (name[0] != '/' || strlen(name) < 2) return 0;
  for (const char *c = name + 1; *c; c++)
    if (*c == '/') return 0;
  return 1;
}

static int get_shm_name(ErlNifEnv *env, ERL_NIF_TERM t, char *out, size_t len) {
  ErlNifBinary bin;
  if (!enif_inspect_binary(env, t, &bin) || bin.size == 0 || bin.size + 2 > len) return 0;
  size_t off = 0;
  if (bin.data[0] != '/') out[off++] = '/';
  memcpy(out + off, bin.data, bin.size);
  out[off + bin.size] = 0;
  return memchr(bin.data, 0, bin.size) == NULL && valid_shm_name(out);
}

ERL_NIF_TERM emlx_nif_to_pointer(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  static _Atomic unsigned long counter;
  ERL_NIF_TERM raised;
  emlx_job *job = emlx_job_for_queue(env, argv[0], EMLX_JOB_TO_POINTER, &raised);
  if (!job) return raised;
  char mode[8];
  unsigned perms;
  if (enif_get_atom(env, argv[2], mode, sizeof mode, ERL_NIF_LATIN1) <= 0 ||
      (strcmp(mode, "local") != 0 && strcmp(mode, "ipc") != 0))
    return emlx_job_fail(env, job, "pointer mode must be :local or :ipc");
  if (!enif_get_uint(env, argv[3], &perms) || perms > 0777)
    return emlx_job_fail(env, job, "permissions must be a file mode between 0 and 0o777");
  char err[256];
  emlx_array_res *res;
  emlx_to_pointer_job *tp = &job->to_pointer;
  if (!emlx_job_take_array(env, argv[1], job, &tp->arr, err, sizeof err)) return emlx_job_fail(env, job, err);
  enif_get_resource(env, argv[1], emlx_array_type, (void **)&res);
  tp->res = res;
  enif_keep_resource(res);
  tp->ipc = strcmp(mode, "ipc") == 0;
  tp->permissions = perms;
  snprintf(tp->shm_name, sizeof tp->shm_name, "/emlx-%ld-%lu", (long)getpid(), ++counter);
  return emlx_job_submit(env, job);
}

ERL_NIF_TERM emlx_nif_from_pointer(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  ERL_NIF_TERM raised;
  emlx_job *job = emlx_job_for_queue(env, argv[0], EMLX_JOB_FROM_POINTER, &raised);
  if (!job) return raised;
  emlx_from_pointer_job *fp = &job->from_pointer;
  ErlNifUInt64 addr;
  if (enif_get_uint64(env, argv[1], &addr)) {
    if (addr == 0) return emlx_job_fail(env, job, "the pointer address is null");
    fp->ipc = 0;
    fp->address = (uintptr_t)addr;
  } else if (get_shm_name(env, argv[1], fp->shm_name, sizeof fp->shm_name)) {
    fp->ipc = 1;
  } else {
    return emlx_job_fail(env, job, "expected an address (integer) or a shared-memory name (binary)");
  }
  const char *bad = emlx_decode_spec(env, argv[2], argv[3], &fp->spec);
  if (bad) return emlx_job_fail(env, job, bad);
  size_t count;
  if (!emlx_spec_count(&fp->spec, &count)) return emlx_job_fail(env, job, "shape too large");
  size_t isz = emlx_dtype_size(fp->spec.dtype);
  if (count > (SIZE_MAX >> 4) / isz) return emlx_job_fail(env, job, "shape too large");
  fp->nbytes = count * isz;
  return emlx_job_submit(env, job);
}

ERL_NIF_TERM emlx_nif_shm_unlink(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
  (void)argc;
  char name[64];
  if (!get_shm_name(env, argv[0], name, sizeof name)) return emlx_raise_arg(env, "invalid shared-memory name");
  if (shm_unlink(name) != 0 && errno != ENOENT) {
    char msg[200];
    snprintf(msg, sizeof msg, "shm_unlink %s: %s", name, strerror(errno));
    return enif_make_tuple2(env, ATOM.error, enif_make_string(env, msg, ERL_NIF_LATIN1));
  }
  return ATOM.ok;
}

/* ---- on the worker ---- */

static void reply_errno(emlx_job *job, const char *what) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(errno));
  emlx_reply_failure(job, EMLX_ERR_ARG, msg);
}

/* The tensor is evaluated and made row-contiguous; the contiguous array
 * replaces the resource's own handle (same values), so the address stays
 * valid while the tensor lives. :ipc copies it into a new POSIX
 * shared-memory segment (MLX arrays are immutable: a memcpy is needed). */
void emlx_run_to_pointer(emlx_queue *q, emlx_job *job) {
  emlx_to_pointer_job *tp = &job->to_pointer;
  emlx_arr *view;
  const void *data;
  size_t nbytes;
  if (!emlx_host_view(q, job, tp->arr, &view, &data, &nbytes)) return;
  if (!tp->ipc) {
    emlx_arr *old = emlx_array_swap(tp->res, view);
    if (!old) {
      emlx_arr_free(view);
      emlx_reply_failure(job, EMLX_ERR_ARG, "the tensor has been deallocated");
      return;
    }
    emlx_arr_free(old);
    emlx_reply_ok(job, enif_make_tuple2(job->env, enif_make_uint64(job->env, (ErlNifUInt64)(uintptr_t)data),
                                   enif_make_uint64(job->env, nbytes)));
    return;
  }
  int fd = shm_open(tp->shm_name, O_CREAT | O_EXCL | O_RDWR, (mode_t)tp->permissions);
  if (fd < 0) {
    emlx_arr_free(view);
    reply_errno(job, "shm_open");
    return;
  }
  size_t map = nbytes ? nbytes : 1;
  void *dst = MAP_FAILED;
  if (ftruncate(fd, (off_t)map) == 0) dst = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (dst == MAP_FAILED) {
    int e = errno;
    close(fd);
    shm_unlink(tp->shm_name);
    emlx_arr_free(view);
    errno = e;
    reply_errno(job, "shared memory");
    return;
  }
  memcpy(dst, data, nbytes);
  munmap(dst, map);
  close(fd);
  emlx_arr_free(view);
  emlx_reply_ok(job, enif_make_tuple2(job->env, emlx_reply_string(job->env, tp->shm_name), enif_make_uint64(job->env, nbytes)));
}

/* :local copies from an address of this process with process_vm_readv,
 * which fails with EFAULT on a bad address instead of crashing. :ipc maps
 * the named segment, copies it, and unlinks it (the receiver owns it). The
 * copy is deliberate: MLX may reuse an input's buffer for an output in
 * place, which must never write into memory EMLX does not own. */
void emlx_run_from_pointer(emlx_queue *q, emlx_job *job) {
  emlx_from_pointer_job *fp = &job->from_pointer;
  void *buf = enif_alloc(fp->nbytes ? fp->nbytes : 1);
  if (!buf) {
    emlx_reply_oom(job);
    return;
  }
  if (!fp->ipc) {
    struct iovec local = {buf, fp->nbytes}, remote = {(void *)fp->address, fp->nbytes};
    ssize_t got = fp->nbytes ? process_vm_readv(getpid(), &local, 1, &remote, 1, 0) : 0;
    if (got < 0 || (size_t)got != fp->nbytes) {
      enif_free(buf);
      if (got >= 0) errno = EFAULT;
      reply_errno(job, "cannot read the pointer's memory");
      return;
    }
  } else {
    int fd = shm_open(fp->shm_name, O_RDONLY, 0);
    if (fd < 0) {
      enif_free(buf);
      reply_errno(job, "shm_open");
      return;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || (size_t)sb.st_size < fp->nbytes) {
      close(fd);
      enif_free(buf);
      errno = EINVAL;
      reply_errno(job, "the shared-memory segment is smaller than the tensor");
      return;
    }
    void *src = fp->nbytes ? mmap(NULL, fp->nbytes, PROT_READ, MAP_SHARED, fd, 0) : NULL;
    close(fd);
    if (src == MAP_FAILED) {
      enif_free(buf);
      reply_errno(job, "mmap");
      return;
    }
    if (src) {
      memcpy(buf, src, fp->nbytes);
      munmap(src, fp->nbytes);
    }
    shm_unlink(fp->shm_name);
  }
  emlx_arr *out;
  emlx_status st = emlx_arr_from_bytes(q->stream, buf, fp->nbytes, fp->spec.dims, fp->spec.ndim, fp->spec.dtype, &out);
  enif_free(buf);
  emlx_reply_array(job, st, out);
}

