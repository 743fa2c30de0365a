#!/usr/bin/env bash
# The whole benchmark suite, one command:
#
#     bash bench/run.sh
#
# 1. bench/setup_venv.sh: bench/.venv with mlx==0.32.4 + mlx-cpu==0.32.4 (the
#    libmlx EMLX links), numpy, matplotlib, scikit-learn (created once, from
#    PyPI).
# 2. mix run bench/emlx_bench.exs: the workloads on EMLX.Backend (eager)
#    and, at sizes it can finish, on Nx.BinaryBackend; for each workload it
#    first has bench/mlx_bench.py --serve run it on Python MLX (CPU device),
#    so both sides are timed back to back (and numpy, where it has the op).
# 3. bench/report.py: bench/results/latest.json, the table, bench/results/latest.png.
#
# Environment: BENCH_ONLY=regex (a subset of workloads), BENCH_TARGET_S
# (seconds each measurement aims to spend, default 1.5), BENCH_EMLX_COMPILED=0
# (skip timing the defn workloads through `compiler: EMLX`, the
# emlx_compiled_s column; on by default), BENCH_DEVICE=cpu|gpu (default cpu;
# the venv's MLX is the CPU build, so for an NVIDIA GPU use bench/run_gpu.sh,
# which needs no venv and writes h200.json), BENCH_QUIET=seconds (on a shared
# machine: before each workload, wait up to that long for the CPUs to be 90%
# idle; each entry's cpu_idle says how idle they were), BENCH_ROUNDS=n
# (default 1: run each workload's sides back to back n times, one round
# after the other, and report the median of the rounds' medians; each
# entry's round_s keeps the rounds). The Elixir
# toolchain and offline deps come from scripts/env.sh unless already set.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# shellcheck source=../scripts/env.sh
source scripts/env.sh

bash bench/setup_venv.sh
python="$root/bench/.venv/bin/python"

parts="$(mktemp -d "${TMPDIR:-/tmp}/emlx-bench.XXXXXX")"
trap 'rm -rf "$parts"' EXIT

start=$(date +%s)

# Compile first, so that build output does not mix with the results.
mix compile >&2

# Both sides, workload by workload (emlx_bench.exs drives mlx_bench.py --serve).
BENCH_PYTHON="$python" mix run bench/emlx_bench.exs "$parts/emlx.json" "$parts/mlx_python.json"
"$python" bench/report.py "$parts/emlx.json" "$parts/mlx_python.json" bench/results \
  --device "${BENCH_DEVICE:-cpu}"

echo "bench: $(nproc) cores, $(uname -m); total $(($(date +%s) - start)) s (timings on a shared machine are noisy)"
