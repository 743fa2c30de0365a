"""One rank of the all_sum bandwidth bench, in Python: NCCL's own figure
through PyTorch's torch.distributed (IMPL=torch) or MLX's NCCL backend
(IMPL=mlx), same size, dtype and timing as bench/dist_allsum.exs.

    IMPL=torch RANK=r PORT=p MIB=1024 ITERS=20 python3 bench/dist_allsum.py
"""
import json
import os
import time

impl = os.environ["IMPL"]
rank = int(os.environ["RANK"])
port = int(os.environ["PORT"])
mib = int(os.environ.get("MIB", "1024"))
iters = int(os.environ.get("ITERS", "20"))
size = 2
# READ=each (default): each result's last element is read and checked
# between calls, outside the timing; READ=last: only the last result's
read_each = os.environ.get("READ", "each") == "each"
n = mib * 1024 * 1024 // 2
# SYNC=ms: each timed call starts at one host-clock instant on both ranks, one
# every ms, as in bench/dist_allsum.exs (rank 0 picks the first after the
# warm-up and hands it over in a file)
sync_ms = os.environ.get("SYNC")
# BATCH=n: each timed call is n all_sums posted back to back and waited for
# once, as bench/dist_allsum.exs's compiled program of n; time per all_sum
batch = int(os.environ.get("BATCH", "1"))
sync_file = f"/tmp/emlx-dist-sync-{port}"
if rank == 0 and os.path.exists(sync_file):
    os.remove(sync_file)

if impl == "torch":
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    torch.cuda.set_device(0)
    x = torch.full((n,), rank + 1, dtype=torch.bfloat16, device="cuda")

    def prepare():
        # all_reduce works in place: copies of x, made before the clock starts
        ys = [x.clone() for _ in range(batch)]
        torch.cuda.synchronize()
        return ys

    def step(ys):
        for y in ys:
            dist.all_reduce(y)
        torch.cuda.synchronize()
        return ys

    def last(ys):
        return ys[-1][-1].item()

else:
    os.environ.update(MLX_RANK=str(rank), MLX_WORLD_SIZE=str(size), NCCL_HOST_IP="127.0.0.1", NCCL_PORT=str(port))
    import mlx.core as mx

    group = mx.distributed.init(strict=True, backend="nccl")
    x = mx.full((n,), rank + 1, dtype=mx.bfloat16)
    mx.eval(x)

    def prepare():
        return None

    def step(_):
        ys = [mx.distributed.all_sum(x, group=group) for _ in range(batch)]
        mx.eval(ys)
        return ys

    def last(ys):
        return ys[-1][-1].item()


for _ in range(3):
    step(prepare())
want = sum(range(1, size + 1))

if sync_ms:
    if rank == 0:
        base = time.time_ns() + 500_000_000
        with open(sync_file + ".tmp", "w") as f:
            f.write(str(base))
        os.rename(sync_file + ".tmp", sync_file)
    else:
        while not os.path.exists(sync_file):
            time.sleep(0.001)
        base = int(open(sync_file).read())
    period = int(sync_ms) * 1_000_000


def slot_start(i):
    """Sleeps to 2 ms before call i's instant, then spins to it."""
    if not sync_ms:
        return
    target = base + i * period
    wait = (target - time.time_ns()) / 1e9 - 0.002
    if wait > 0:
        time.sleep(wait)
    while time.time_ns() < target:
        pass


times = []
for i in range(iters):
    y = prepare()
    slot_start(i)
    t0 = time.perf_counter()
    y = step(y)
    times.append((time.perf_counter() - t0) / batch)
    if read_each or i == iters - 1:
        assert last(y) == want
    del y
times.sort()
median = times[iters // 2]
nbytes = n * 2
busbw = nbytes / median * 2 * (size - 1) / size / 1e9
print("DIST_RESULT " + json.dumps(dict(impl=impl, read="each" if read_each else "last", sync_ms=int(sync_ms) if sync_ms else None, batch=batch, rank=rank, size=size, bytes=nbytes, median_s=median,
                                       min_s=times[0], busbw_gbs=busbw)), flush=True)
