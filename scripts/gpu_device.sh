#!/usr/bin/env bash
# Runs on the GPU host of the `device` tool (Ubuntu, no network, no Erlang),
# with the pieces made by scripts/gpu_pack.sh carried one per call:
#
#   bash scripts/gpu_device.sh stage .gpu1      # copy a piece into /tmp (the host keeps /tmp while warm)
#   bash scripts/gpu_device.sh run CMD ARGS...  # unpack once, set the environment, run CMD in the repo
#   bash scripts/gpu_device.sh savecache DIR    # MLX's and the driver's JIT caches into DIR
#
# A new host compiles every CUDA kernel MLX builds at run time (NVRTC, then
# the driver's PTX JIT): seconds per new shape, minutes over the test suite.
# `savecache`, run at the end of a call (e.g. `... savecache $OUT`), packs
# both caches (MLX's PTX under /tmp/mlx/VERSION/ptx, the driver's under
# ~/.nv/ComputeCache) as jitcache.part.N pieces of 15 MB; copied into .gpucache/
# here, scripts/gpu_pack.sh carries them, and `run` restores them before
# the first command on the next host.
#
# NVIDIA's libraries come from the host: the nvidia-* pip packages' lib
# folders of its Python (NVIDIA_SITE), put on LD_LIBRARY_PATH.
set -euo pipefail
pack=/tmp/emlx-pack
what=$1
shift

case "$what" in
stage)
  mkdir -p "$pack"
  cp "$1"/pack.part.* "$1"/pylib.tar.xz "$1"/jitcache.part.* "$pack"/ 2>/dev/null || true
  ls -la "$pack"
  ;;
run)
  if [ ! -f /tmp/emlx-unpacked ]; then
    cat "$pack"/pack.part.* | xz -d | tar -C / -xf -
    # libmlx (the mlx-cuda-13 wheel), Python's mlx and mlx-lm share one
    # site-packages, at the path the build expects (its marker says the
    # wheel is unpacked).
    site=/root/.cache/emlx/libmlx-0.32.4-cuda13/site-packages
    mkdir -p "$site"
    for whl in /root/.cache/emlx/wheels/mlx_cuda_13-0.32.4-*.whl /work/gpustage/mlx-0.32.4-cp312-*.whl \
      /work/gpustage/mlx_lm-0.32.0-py3-none-any.whl; do
      python3 -m zipfile -e "$whl" "$site"
    done
    echo "mlx-cuda-13==0.32.4" >"$site/.emlx-complete"
    if ls "$pack"/jitcache.part.* >/dev/null 2>&1; then
      cat "$pack"/jitcache.part.* | xz -d | tar -C / -xf - || echo "the JIT cache did not unpack" >&2
    fi
    touch /tmp/emlx-unpacked
  fi
  # The NIF built with the pack serves as long as the C sources are the same
  # (else make rebuilds it here); Mix recompiles the Elixir side as needed.
  if sha256sum --quiet -c /work/gpubuild/_build/csrc.sha256 >/dev/null 2>&1; then
    # (the OpenBLAS copies too: a host with its own, newer OpenBLAS would
    # otherwise have make copy that one in and relink)
    touch /work/gpubuild/_build/lib/emlx/c_obj/* /work/gpubuild/_build/lib/emlx/priv/libmlx/openblas/* \
      /work/gpubuild/_build/lib/emlx/priv/*
  else
    echo "C sources differ from the pack's build: make rebuilds the NIF here" >&2
  fi
  nv="${NVIDIA_SITE:-/opt/torch/.venv/lib/python3.12/site-packages/nvidia}"
  LD_LIBRARY_PATH="$(ls -d "$nv"/*/lib | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
  export PATH="/usr/lib/erlang/bin:$(ls -d /opt/emlx/elixir-*/bin | head -n 1):$PATH"
  export EMLX_DEPS_PATH=/opt/emlx/deps HEX_OFFLINE=1 MIX_BUILD_PATH=/work/gpubuild/_build LIBMLX_VARIANT=cuda13
  export PYTHONPATH=/root/.cache/emlx/libmlx-0.32.4-cuda13/site-packages
  # mlx-lm's dependencies (the pylib piece) and a venv-shaped wrapper of the
  # host's python3, for the tests that compare with Python MLX (EMLX_PYENV).
  if [ -f "$pack/pylib.tar.xz" ]; then
    [ -d /tmp/pylib ] || tar -C /tmp -xJf "$pack/pylib.tar.xz"
    PYTHONPATH="$PYTHONPATH:/tmp/pylib"
    mkdir -p /tmp/pyenv/bin
    printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" >/tmp/pyenv/bin/python
    chmod +x /tmp/pyenv/bin/python
    export EMLX_PYENV="${EMLX_PYENV:-/tmp/pyenv}"
  fi
  export MIX_ENV="${MIX_ENV:-test}"
  "$@"
  ;;
savecache)
  mkdir -p "$1"
  # (MLX's CPU kernels, under /tmp/mlx/VERSION/cpu, are left: large, and
  # quick to build on a host of 16 cores)
  dirs=$(cd / && for d in tmp/mlx/*/ptx root/.nv/ComputeCache; do [ -d "$d" ] && echo "$d"; done || true)
  if [ -z "$dirs" ]; then
    echo "no JIT cache here" >&2
    exit 0
  fi
  # shellcheck disable=SC2086
  tar -C / -cf - $dirs | xz -T0 -6 | split -b 15M -d -a 1 - "$1/jitcache.part."
  ls -la "$1"/jitcache.part.*
  ;;
*)
  echo "usage: $0 stage DIR | run CMD... | savecache DIR" >&2
  exit 2
  ;;
esac
