#!/usr/bin/env bash
# Packs what a GPU host without network or Erlang needs to build-free run
# EMLX's tests and bench there: Erlang/OTP (Debian's /usr/lib/erlang),
# Elixir, the Hex archive, the offline Mix deps, the cuda13 libmlx wheel
# unpacked, a test build of EMLX compiled here against it, and the Python
# `mlx` and `mlx-lm` wheels (for the benches' Python side). The pack is
# split into pieces of at most $PIECE_MB MB in ignored folders .gpu1/,
# .gpu2/, ... (one per device call); scripts/gpu_device.sh reassembles and
# runs them there.
#
#   bash scripts/gpu_pack.sh            # build (if needed) and pack
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

PIECE_MB="${PIECE_MB:-55}"
BUILD=/work/gpubuild/_build
STAGE=/work/gpustage

for d in .gpu1 .gpu2 .gpu3 .gpu4 .gpu5 .gpu6; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude
  rm -rf "$d"
done
grep -qx "/.gpucache/" .git/info/exclude 2>/dev/null || echo "/.gpucache/" >>.git/info/exclude

echo "==> cuda13 test build in $BUILD"
LIBMLX_VARIANT=cuda13 MIX_BUILD_PATH="$BUILD" MIX_ENV=test mix compile 2>&1 | grep -v "libcuda.so.1\|load_failed\|^ *{\|^$" || true
test -f "$BUILD/lib/emlx/priv/libemlx.so"
# What the NIF was built from: the device side reuses it only for the same C sources.
sha256sum Makefile $(git ls-files c_src) >"$BUILD/csrc.sha256"

mkdir -p "$STAGE"
if ! ls "$STAGE"/mlx-0.32.4-cp312-*.whl >/dev/null 2>&1; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 -d "$STAGE" mlx==0.32.4
fi
# mlx-lm (pure Python) for bench/llm_decode.sh; the host's Python has its
# other dependencies (transformers, jinja2, pyyaml, ...).
if ! ls "$STAGE"/mlx_lm-0.32.0-py3-none-any.whl >/dev/null 2>&1; then
  python3 -m pip download -q --no-deps -d "$STAGE" mlx-lm==0.32.0
fi

# mlx-lm's pure-Python dependencies for the host's Python 3.12 (its own
# numpy and torch stay), for the tests and benches that run mlx-lm there.
if [ ! -f "$STAGE/pylib.tar.xz" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp/whl" mlx-lm==0.32.0
  rm -f "$tmp"/whl/numpy-* "$tmp"/whl/hf_xet-* "$tmp"/whl/mlx-* "$tmp"/whl/mlx_metal-*
  for whl in "$tmp"/whl/*.whl; do python3 -m zipfile -e "$whl" "$tmp/pylib"; done
  tar -C "$tmp" -cJf "$STAGE/pylib.tar.xz" pylib
  rm -rf "$tmp"
fi

echo "==> packing"
elixir_dir=$(dirname "$(dirname "$(command -v elixir)")")
# The wheels travel as they are (already compressed); the device unpacks them,
# and mix copies libmlx into the build's priv/libmlx there (the NIF's
# OpenBLAS copies, priv/libmlx/openblas, travel with the build).
wheels=("$HOME"/.cache/emlx/wheels/mlx_cuda_13-0.32.4-*.whl "$STAGE"/mlx-0.32.4-cp312-*.whl "$STAGE"/mlx_lm-0.32.0-py3-none-any.whl)
tar -C / --exclude='*/priv/libmlx/mlx' --exclude='*/priv/libmlx/*.libs' --exclude='*/src/*.erl' --exclude='*/examples' --exclude='*/doc' --exclude='*/man' -cf - \
  usr/lib/erlang \
  "${elixir_dir#/}/bin" "${elixir_dir#/}/lib" \
  "${HOME#/}/.mix/archives" \
  "${EMLX_DEPS_PATH#/}" \
  "${BUILD#/}" \
  "${wheels[@]#/}" |
  xz -T2 -3 >"$STAGE/pack.tar.xz"

rm -f "$STAGE"/pack.part.*
split -b "${PIECE_MB}M" -d -a 1 "$STAGE/pack.tar.xz" "$STAGE/pack.part."
i=1
for part in "$STAGE"/pack.part.*; do
  mkdir -p ".gpu$i" && cp "$part" ".gpu$i/"
  i=$((i + 1))
done
# The Python side travels as one more piece.
mkdir -p ".gpu$i" && cp "$STAGE/pylib.tar.xz" ".gpu$i/"
i=$((i + 1))
# MLX's and the driver's JIT caches from an earlier GPU run, when kept in
# .gpucache/ (scripts/gpu_device.sh savecache): one more piece.
if ls .gpucache/jitcache.part.* >/dev/null 2>&1; then
  mkdir -p ".gpu$i" && cp .gpucache/jitcache.part.* ".gpu$i/"
  i=$((i + 1))
fi
ls -la .gpu*/
echo "pieces: $((i - 1)); sha256 $(sha256sum "$STAGE/pack.tar.xz" | cut -c1-16)"
