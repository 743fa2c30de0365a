#!/usr/bin/env bash
# Creates bench/.venv (once) with what the benchmarks and the digits example
# need from PyPI: mlx and mlx-cpu at the same version as the libmlx EMLX links,
# numpy for the bench's numpy column, mlx-lm for the LLM decode bench
# (bench/llm_decode.sh), matplotlib for the chart, scikit-learn for its
# bundled digits dataset.
#
#   bash bench/setup_venv.sh        # idempotent; about 3 s when ready
#
# PYTHON picks the interpreter (default: python3). MLX_VERSION overrides the
# MLX version (default 0.32.4, as LIBMLX_VERSION in mix.exs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
mlx_version="${MLX_VERSION:-${LIBMLX_VERSION:-0.32.4}}"
python="${PYTHON:-python3}"

mlx_lm_version="${MLX_LM_VERSION:-0.32.0}"
packages=("mlx==$mlx_version" "mlx-cpu==$mlx_version" "mlx-lm==$mlx_lm_version" "numpy" "matplotlib" "scikit-learn")

ready() {
  [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" - "$mlx_version" "$mlx_lm_version" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
import mlx.core, mlx_lm, numpy, matplotlib, sklearn  # noqa: F401
assert version("mlx") == sys.argv[1] and version("mlx-cpu") == sys.argv[1]
assert version("mlx-lm") == sys.argv[2]
PY
}

if ready; then
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "bench: creating $venv" >&2
  "$python" -m venv "$venv"
fi

echo "bench: installing ${packages[*]} into $venv" >&2
"$venv/bin/python" -m pip install --quiet "${packages[@]}"

ready || {
  echo "bench: $venv is not usable after installing ${packages[*]}" >&2
  exit 1
}
