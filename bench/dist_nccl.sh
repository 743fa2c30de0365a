#!/usr/bin/env bash
# All_sum bandwidth over NCCL on a host with two GPUs (run there through
# scripts/gpu_device.sh run): EMLX.Distributed, Python MLX and PyTorch's
# torch.distributed (NCCL's own figure), two processes each, one GPU a
# process, a 1 GiB bf16 tensor (MIB); EMLX twice, with its per-call
# type-and-shape check (the default) and without (check_shapes: false).
# Writes OUT/nccl.json with each rank's result and the ratios of bus
# bandwidth, EMLX / PyTorch and EMLX / MLX. READ=last checks only the last
# result of each run (default READ=each: every result, between the timed calls).
# SYNC=ms starts each timed call at one host-clock instant on both ranks, one
# every ms, for every implementation (so one rank's read-back does not show
# as waiting in the other's call). BATCH=n times n all_sums posted back to
# back and waited for once (EMLX: one compiled program of n), per all_sum,
# as NCCL's own tests time them.
set -uo pipefail
out="${1:-/tmp/emlx-nccl}"
mkdir -p "$out"
# NVLink multicast stays off on shared hosts (the device tool's rule)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export MIB="${MIB:-1024}" ITERS="${ITERS:-20}"
mix compile >/dev/null
log="$out/nccl.log"
: >"$log"

pair() { # impl port cmd...
  local impl=$1 port=$2
  shift 2
  for r in 0 1; do
    CUDA_VISIBLE_DEVICES=$r IMPL=$impl RANK=$r PORT=$port timeout 300 "$@" >>"$log.$impl.$r" 2>&1 &
  done
  wait
  cat "$log.$impl.0" "$log.$impl.1" >>"$log"
}

pair torch 29511 python3 bench/dist_allsum.py
pair mlx 29521 python3 bench/dist_allsum.py
pair emlx 29531 mix run --no-compile bench/dist_allsum.exs
pair emlx_nocheck 29541 mix run --no-compile bench/dist_allsum.exs

python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
rows = [json.loads(m) for m in re.findall(r"^DIST_RESULT (.*)$", open(f"{out}/nccl.log").read(), re.M)]
by = {}
for r in rows:
    by.setdefault(r["impl"], []).append(r)
# a collective ends when its slowest rank does
bw = {k: min(r["busbw_gbs"] for r in v) for k, v in by.items() if len(v) == 2}
res = {"workload": "all_sum bf16, 2 ranks x 1 GPU, NCCL", "ranks": rows, "busbw_gbs": bw}
if "emlx" in bw and "torch" in bw:
    res["emlx_over_torch"] = bw["emlx"] / bw["torch"]
if "emlx" in bw and "mlx" in bw:
    res["emlx_over_mlx"] = bw["emlx"] / bw["mlx"]
if "emlx_nocheck" in bw and "torch" in bw:
    res["emlx_nocheck_over_torch"] = bw["emlx_nocheck"] / bw["torch"]
json.dump(res, open(f"{out}/nccl.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
grep -v DIST_RESULT "$log" | tail -n 30
