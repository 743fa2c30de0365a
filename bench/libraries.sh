#!/usr/bin/env bash
# Runs the test suites of Polaris, Axon, Scholar and Nx itself twice each:
# with their upstream defaults, and with EMLX as the global default backend
# and defn compiler. Prints passed/total per suite both ways and the
# failures that happen on EMLX only, grouped by cause; writes
# bench/results/libraries.md and bench/results/libraries.json.
#
#     bash bench/libraries.sh                 # all four suites, Nx last
#     SUITES="polaris axon" bash bench/libraries.sh
#     bash bench/libraries.sh summarize       # only rebuild the table from the last results
#
# The libraries' code never enters this repository. LIBS_DIR (default
# /opt/emlx/libs) holds plain checkouts, one folder each:
#
#     LIBS_DIR/polaris         elixir-nx/polaris
#     LIBS_DIR/axon            elixir-nx/axon
#     LIBS_DIR/scholar         elixir-nx/scholar
#     LIBS_DIR/nimble_options  dashbitco/nimble_options (Scholar needs it)
#     LIBS_DIR/nx              the nx/ folder of elixir-nx/nx at the tag of the
#                              Nx that EMLX uses (v0.13.1): its test/ and config/
#
# An optional LIBS_DIR/<name>/.emlx_ref file names the commit or tag; it is
# reported with the results. Nx, complex and telemetry themselves come from
# EMLX_DEPS_PATH (scripts/env.sh), as for EMLX. Dependencies that cannot be
# had offline (exla, torchx, scidata, table_rex, kino) are left out; the few
# tests that need them fail alike both ways.
#
# Each library is copied to WORK_DIR/<suite>-<mode> (default
# /tmp/emlx-libs; its _build is kept, so a re-run only recompiles what
# changed), its dependencies are rewritten as path dependencies and its
# test_helper.exs gets a prelude that installs the result formatter (see
# bench/libraries.exs). The suite runs through bench/libraries_run.exs (what
# `mix test` does: compile and load every test file, then run; in mode
# emlx, EMLX becomes the global default backend and defn compiler in
# between). Each run has a time limit, SUITE_TIMEOUT seconds (default
# 2400); a run that reaches it is reported with the number of tests it got
# through. ExUnit's own per-test limit (60 s) applies as upstream.
# LIBS_SEED (default 0) and LIBS_MAX_CASES (default 2) go to ExUnit.
# LIBS_EMLX_LINALG=nx runs the EMLX side with `config :emlx, linalg: :nx`
# (Nx's own linear-algebra algorithms); RESULT_NAME (default libraries)
# names the summary's files in bench/results. For example, with the
# upstream results of a first run copied into the second WORK_DIR:
#
#     LIBS_EMLX_LINALG=nx SUITES=nx MODES=emlx WORK_DIR=/tmp/emlx-libs-la \
#       RESULT_NAME=libraries_linalg_nx bash bench/libraries.sh
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../scripts/env.sh
source "$root/scripts/env.sh" || exit 1

export LIBS_DIR="${LIBS_DIR:-/opt/emlx/libs}"
export EMLX_ROOT="$root"
work="${WORK_DIR:-/tmp/emlx-libs}"
results="$work/results"
suites="${SUITES:-polaris axon scholar nx}"
limit="${SUITE_TIMEOUT:-2400}"
modes="${MODES:-upstream emlx}"
mkdir -p "$results" "$root/bench/results"

name="${RESULT_NAME:-libraries}"

summarize() {
  elixir "$root/bench/libraries.exs" summarize "$results" \
    "$root/bench/results/$name.md" "$root/bench/results/$name.json"
}

if [ "${1:-}" = "summarize" ]; then
  summarize
  exit $?
fi

[ -n "${EMLX_DEPS_PATH:-}" ] || { echo "EMLX_DEPS_PATH is not set (scripts/env.sh)" >&2; exit 1; }

for suite in $suites; do
  for mode in $modes; do
    dir="$work/$suite-$mode"
    out="$results/$suite-$mode"
    echo "== $suite ($mode) in $dir" >&2
    elixir "$root/bench/libraries.exs" prepare "$suite" "$mode" "$dir" || exit 1
    rm -f "$out.results" "$out.meta"

    # Compile first: build time is not test time.
    if ! (cd "$dir" && MIX_ENV=test mix compile >"$out.compile.log" 2>&1); then
      echo "   compile failed, see $out.compile.log" >&2
      printf 'exit=compile failed\n' >"$out.meta"
      continue
    fi

    start=$(date +%s)
    (cd "$dir" && MIX_ENV=test EMLX_LIBS_RESULTS="$out.results" \
      timeout -k 30 "$limit" mix run "$root/bench/libraries_run.exs" "$mode" >"$out.log" 2>&1)
    status=$?
    seconds=$(($(date +%s) - start))
    case $status in
      0 | 2) what="done" ;;
      124 | 137) what="time limit ${limit} s" ;;
      *) what="exit $status" ;;
    esac
    ref="$(cat "$LIBS_DIR/$suite/.emlx_ref" 2>/dev/null || echo unknown)"
    # test files whose module attributes call Nx (tensors compiled into the module)
    attrs="$(cd "$dir" && grep -rlE '^\s*@[a-z_0-9]+ .*Nx\.' test --include='*_test.exs' | wc -l)"
    switched="$(cat "$dir/.emlx_switched" 2>/dev/null)"
    linalg="$([ "$mode" = emlx ] && echo "${LIBS_EMLX_LINALG:-native}" || echo native)"
    printf 'seconds=%s\nexit=%s\nref=%s\nattr_files=%s\nswitched=%s\nlinalg=%s\n' \
      "$seconds" "$what" "$ref" "$attrs" "$switched" "$linalg" >"$out.meta"
    echo "   $what in ${seconds} s; $(tail -n 3 "$out.log" | grep -E 'tests?,' || echo 'no summary line')" >&2

    # Tests that waited in vain for a message (1 s) may have lost a race with
    # the suite's load: run them again, alone, to classify them (the
    # summary names them as such; the counts above stay the first run's).
    rm -f "$out.rerun.results" "$out.rerun.list"
    if [ "$mode" = emlx ]; then
      elixir "$root/bench/libraries.exs" reruns "$out" >"$out.rerun.list"
      if [ -s "$out.rerun.list" ]; then
        glob="$(head -n 1 "$out.rerun.list")"
        tail -n +2 "$out.rerun.list" >"$out.rerun.tests"
        echo "   again, alone: $(wc -l <"$out.rerun.tests") test(s) that waited in vain for a message" >&2
        (cd "$dir" && MIX_ENV=test EMLX_LIBS_RESULTS="$out.rerun.results" LIBS_FILES="$glob" \
          LIBS_ONLY_TESTS="$out.rerun.tests" timeout -k 30 600 \
          mix run "$root/bench/libraries_run.exs" "$mode" >"$out.rerun.log" 2>&1)
      fi
    fi
  done
done

summarize
