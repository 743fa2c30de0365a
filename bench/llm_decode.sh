#!/usr/bin/env bash
# LLM decode speed: EMLX's examples/llm_decode.exs against mlx-lm's greedy
# decode on the same Qwen3-0.6B-shaped model (random weights, bf16 and
# 4-bit), warm, written to bench/results/llm_<device>.json (see
# bench/llm_decode.py for what is measured).
#
#   bash bench/llm_decode.sh                  # CPU; makes bench/.venv (with mlx-lm) if needed
#   LLM_DEVICE=gpu PYTHON=python3 bash bench/llm_decode.sh   # a host without network
#
# Environment:
#   PYTHON          a python that imports mlx (the libmlx version EMLX links)
#                   and mlx_lm==0.32.0, e.g. through PYTHONPATH; without it
#                   bench/setup_venv.sh makes bench/.venv and that is used
#   LLM_DEVICE      cpu (default) or gpu (EMLX built with LIBMLX_VARIANT=cuda13)
#   LLM_CACHE       model folders, made once (default ~/.cache/emlx/llm-bench:
#                   qwen3-0.6b-bf16/ and qwen3-0.6b-4bit/, about 1.6 GB);
#                   pre-made folders there are used as they are
#   LLM_PROMPT_TOKENS (default 16), LLM_NEW_TOKENS (default 32),
#   LLM_VARIANTS (default bf16,4bit), LLM_RUNS (timed runs, best kept; default 2),
#   LLM_ROUNDS (default 1: rounds of mlx-lm then EMLX, the median ratio's reported),
#   LLM_FUSE (off, the default: EMLX's plans without mx::compile; on; or
#   both: each round runs EMLX both ways), LLM_OUT (default bench/results/llm_<device>.json)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# shellcheck source=../scripts/env.sh
source scripts/env.sh

device="${LLM_DEVICE:-cpu}"
if [ -n "${PYTHON:-}" ]; then
  python="$PYTHON"
else
  bash bench/setup_venv.sh
  python="$root/bench/.venv/bin/python"
fi

"$python" -c "import mlx.core, mlx_lm" || {
  echo "bench: $python cannot import mlx and mlx_lm (set PYTHON / PYTHONPATH)" >&2
  exit 1
}

export MIX_ENV="${MIX_ENV:-dev}"
mix compile >/dev/null

exec "$python" bench/llm_decode.py \
  --python "$python" \
  --device "$device" \
  --cache "${LLM_CACHE:-$HOME/.cache/emlx/llm-bench}" \
  --prompt-tokens "${LLM_PROMPT_TOKENS:-16}" \
  --new-tokens "${LLM_NEW_TOKENS:-32}" \
  --variants "${LLM_VARIANTS:-bf16,4bit}" \
  --runs "${LLM_RUNS:-2}" \
  --rounds "${LLM_ROUNDS:-1}" \
  --fuse "${LLM_FUSE:-off}" \
  --out "${LLM_OUT:-$root/bench/results/llm_$device.json}"
