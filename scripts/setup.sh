#!/usr/bin/env bash
# Sets up everything EMLX needs on Debian 12, idempotently (seconds when
# the machine is ready):
#   1. Debian packages: Erlang/OTP with its headers, build tools, Python venv,
#      OpenBLAS (MLX's BLAS and LAPACK calls go to it: see the Makefile).
#   2. Elixir >= 1.18 (its JSON module reads model configs): Debian 12 ships
#      1.14, so Elixir 1.18 is built from Debian's own source archive
#      (trixie) into $EMLX_HOME/elixir-<version>.
#   3. Mix dependencies: from Hex where hex.pm is reachable; otherwise the
#      offline copies at $EMLX_DEPS_PATH (default $EMLX_HOME/deps) are checked.
#   4. The MLX wheel (mlx-cpu 0.32.4 from PyPI, sha256-checked) and the NIF,
#      through `mix compile`.
#   5. The Python venv the interop tests run (safetensors written by Python
#      MLX, token equality with mlx-lm): mlx, mlx-cpu 0.32.4 and mlx-lm
#      0.32.0 from PyPI at $EMLX_PYENV (default $EMLX_HOME/pyenv).
set -euo pipefail
cd "$(dirname "$0")/.."

EMLX_HOME="${EMLX_HOME:-/opt/emlx}"
export EMLX_IN_SETUP=1
ELIXIR_VERSION=1.18.3
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
start=$(date +%s)

say() { printf '\n==> %s\n' "$*"; }

# 1. Debian packages -----------------------------------------------------
packages=(erlang-nox erlang-dev erlang-xmerl build-essential make python3-venv xz-utils dpkg-dev ca-certificates git libopenblas0-pthread)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

# 2. Elixir ---------------------------------------------------------------
elixir_dir="$EMLX_HOME/elixir-$ELIXIR_VERSION"
if [ -x "$elixir_dir/bin/elixir" ]; then
  say "Elixir $ELIXIR_VERSION present in $elixir_dir"
else
  say "building Elixir $ELIXIR_VERSION from Debian's source archive"
  src_list=/etc/apt/sources.list.d/emlx-trixie-src.sources
  if [ ! -f "$src_list" ]; then
    uri=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    uri="${uri:-http://deb.debian.org/debian}"
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" |
      $SUDO tee "$src_list" >/dev/null
  fi
  $SUDO apt-get update -qq
  work="$EMLX_HOME/src"
  $SUDO mkdir -p "$work" && $SUDO chown "$(id -u)" "$work"
  # The .dsc of this source package is missing upstream, so apt exits
  # non-zero; the orig tarball, which is all we need, still arrives.
  (cd "$work" && apt-get source --download-only "elixir-lang=$ELIXIR_VERSION.dfsg-1" >/dev/null 2>&1 ||
    apt-get source --download-only elixir-lang >/dev/null 2>&1 || true)
  tarball=$(ls "$work"/elixir-lang_"$ELIXIR_VERSION"*.orig.tar.* 2>/dev/null | head -n 1 || true)
  [ -n "$tarball" ] || { echo "could not download the elixir-lang $ELIXIR_VERSION source from Debian trixie" >&2; exit 1; }
  $SUDO mkdir -p "$elixir_dir" && $SUDO chown "$(id -u)" "$elixir_dir"
  tar -xf "$tarball" -C "$elixir_dir" --strip-components=1
  make -C "$elixir_dir" compile >/dev/null
fi
export PATH="$elixir_dir/bin:$PATH"

# 3. Mix dependencies -------------------------------------------------------
deps_path="${EMLX_DEPS_PATH:-$EMLX_HOME/deps}"
if curl -fsS -m 10 -o /dev/null https://repo.hex.pm/installs/hex-1.x.csv 2>/dev/null; then
  say "hex.pm reachable: fetching dependencies from Hex"
  mix local.hex --force --if-missing >/dev/null
  unset EMLX_DEPS_PATH
  mix deps.get
else
  say "hex.pm unreachable: using offline dependencies at $deps_path"
  export EMLX_DEPS_PATH="$deps_path"
  # env.sh checks nx/, complex/, telemetry/ and the Hex archive, and says what is missing.
  # shellcheck source=env.sh
  source scripts/env.sh
fi

# 4. MLX and the NIF -----------------------------------------------------
# shellcheck source=env.sh
source scripts/env.sh
say "fetching MLX (if needed) and compiling EMLX"
MIX_ENV=test mix compile
mix compile

# 5. The Python venv of the interop tests ----------------------------------
pyenv="${EMLX_PYENV:-$EMLX_HOME/pyenv}"
py_packages=(mlx==0.32.4 mlx-cpu==0.32.4 mlx-lm==0.32.0)
if [ -x "$pyenv/bin/python" ] && "$pyenv/bin/python" - <<'PY' >/dev/null 2>&1
from importlib.metadata import version
import mlx.core, mlx_lm  # noqa: F401
assert (version("mlx"), version("mlx-cpu"), version("mlx-lm")) == ("0.32.4", "0.32.4", "0.32.0")
PY
then
  say "Python venv present in $pyenv"
else
  say "making the Python venv $pyenv (${py_packages[*]})"
  $SUDO mkdir -p "$pyenv" && $SUDO chown "$(id -u)" "$pyenv"
  python3 -m venv "$pyenv"
  "$pyenv/bin/python" -m pip install --quiet "${py_packages[@]}"
fi

say "ready in $(($(date +%s) - start))s. Tests: bash .ci/run"
