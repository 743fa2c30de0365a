#!/usr/bin/env bash
# The benchmark suite on an NVIDIA GPU (MLX's CUDA backend), one command, on
# a host without network:
#
#     BENCH_PYTHON=python3 PYTHONPATH=/path/to/site-packages \
#       bash bench/run_gpu.sh [OUT_DIR]
#
# Unlike bench/run.sh it creates no venv: BENCH_PYTHON (default python3)
# must already import mlx (the same version as the libmlx EMLX links, a
# CUDA build), e.g. through PYTHONPATH; matplotlib is optional (without it
# there is no chart, the JSON is still written). EMLX must build for the GPU
# in this environment (LIBMLX_VARIANT=cuda13, or MLX_DIR, plus a
# LIBMLX_CACHE holding the wheel: see README.md); the Elixir toolchain comes
# from scripts/env.sh as in bench/run.sh.
#
# Two passes, each running both sides workload by workload (emlx_bench.exs
# drives mlx_bench.py --serve) at the GPU sizes (BENCH_DEVICE=gpu):
#   1. every workload with MLX_ENABLE_TF32=0: f32 matmuls in full f32,
#      EMLX's default, on both sides;
#   2. the f32 matmul rows again with MLX_ENABLE_TF32=1 (TF32 on both
#      sides), named matmul_N_f32_tf32. BENCH_TF32=0 skips this pass.
# Then bench/report.py merges them into OUT_DIR/NAME.json (NAME:
# BENCH_RESULT_NAME, default h200) shaped
#     {"device": ..., "entries": [...], "conformance": {...}}
# and draws OUT_DIR/NAME.png. The conformance numbers come from
# BENCH_CONFORMANCE (default OUT_DIR/conformance.json), a JSON object
#     {"doctests": [passed, total], "differential": [passed, total],
#      "fuzz_crashes": n}
# written by whoever ran the tests on this host; null when absent.
#
# Everything goes to OUT_DIR (default bench/results): NAME.json, NAME.png,
# NAME.txt (the table), and NAME-parts/ (each side's raw JSON).
#
# Environment as for bench/run.sh: BENCH_ONLY=regex (pass 1 only),
# BENCH_TARGET_S, BENCH_EMLX_COMPILED=0, BENCH_ROUNDS=n.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/bench/results}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root"

# shellcheck source=../scripts/env.sh
source scripts/env.sh

python="${BENCH_PYTHON:-python3}"
name="${BENCH_RESULT_NAME:-h200}"
export BENCH_DEVICE=gpu BENCH_PYTHON="$python"

device="$("$python" bench/mlx_bench.py --device-info)" || {
  echo "bench: $python cannot run MLX on the GPU (set BENCH_PYTHON / PYTHONPATH)" >&2
  exit 1
}
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)"
device="${gpu_name:-$device}"

parts="$out/$name-parts"
mkdir -p "$parts"

start=$(date +%s)

# Compile first, so that build output does not mix with the results.
mix compile >&2

MLX_ENABLE_TF32=0 mix run bench/emlx_bench.exs "$parts/emlx.json" "$parts/mlx_python.json"

more=()
if [ "${BENCH_TF32:-1}" != 0 ]; then
  MLX_ENABLE_TF32=1 BENCH_ONLY='_f32_tf32$' \
    mix run bench/emlx_bench.exs "$parts/emlx_tf32.json" "$parts/mlx_python_tf32.json"
  more=(--more "$parts/emlx_tf32.json" "$parts/mlx_python_tf32.json")
fi

"$python" bench/report.py "$parts/emlx.json" "$parts/mlx_python.json" "$out" \
  --device gpu --name "$name" --device-name "$device" \
  --conformance "${BENCH_CONFORMANCE:-$out/conformance.json}" ${more[@]+"${more[@]}"} |
  tee "$out/$name.txt"

echo "bench: $device; total $(($(date +%s) - start)) s"
