#!/usr/bin/env bash
# The test suite on the GPU (run on a GPU host, e.g. through
# scripts/gpu_device.sh run): every test with :gpu as the default device,
# then Nx's doctests with no exclusion list. Writes to OUT (default
# /tmp/emlx-gpu): tests.log, doctests_all.log and conformance.json
# ({"doctests": [passed, total] of the eager and compiled runs with no
#   exclusions,
#   "differential": [passed, total], "fuzz_crashes": n}), which
# bench/report.py puts into bench/results/h200.json.
#
# The whole run takes longer than one 10-minute device call: PART (second
# argument) splits it. `tests` runs every test file but the doctest module
# (`tests1` ... `testsN`: every N-th of those files, N from PARTS, default
# 2, in N calls),
# `doctests` runs the doctests with no exclusion list, and `all` (default)
# runs both; conformance.json is written from the logs OUT holds (`report`
# runs nothing and only writes it, e.g. after the two parts ran at once in
# two folders and doctests_all.log was copied next to tests.log).
set -uo pipefail
out="${1:-/tmp/emlx-gpu}"
part="${2:-all}"
mkdir -p "$out"
export EMLX_TEST_DEVICE=gpu MIX_ENV=test

# `mix test ARGS` into LOG, watched: a run whose log has not grown for
# EMLX_STALL_S seconds (default 240) gets a crash dump (SIGUSR1: the VM
# writes LOG's .erl_crash.dump and halts) and the stacks of its test
# processes appended to LOG. Two whole-suite runs of session 22 stalled
# with every thread of a VM asleep; this says where the next one waits.
watched() {
  local log=$1 dump=${1%.log}.erl_crash.dump
  shift
  rm -f "$dump" "$dump.stalled"
  ERL_CRASH_DUMP=$dump mix test "$@" >"$log" 2>&1 &
  local run=$!
  (
    size=-1 since=$(date +%s)
    while sleep 10; do
      now=$(stat -c %s "$log" 2>/dev/null || echo 0)
      if [ "$now" != "$size" ]; then size=$now since=$(date +%s); continue; fi
      [ $(($(date +%s) - since)) -ge "${EMLX_STALL_S:-240}" ] || continue
      for pid in $(pgrep beam.smp); do
        tr '\0' '\n' </proc/"$pid"/environ 2>/dev/null | grep -qx "ERL_CRASH_DUMP=$dump" || continue
        echo "$pid" >"$dump.stalled"
        kill -USR1 "$pid"
      done
      break
    done
  ) &
  local watch=$!
  # (`timeout` around this script ends the VM too, not only the script)
  trap "kill -KILL $run $watch 2>/dev/null" TERM INT
  wait "$run"
  local st=$?
  kill "$watch" 2>/dev/null
  wait "$watch" 2>/dev/null
  if [ -f "$dump.stalled" ]; then
    echo "EMLX stall watchdog: no output for ${EMLX_STALL_S:-240} s; VM $(cat "$dump.stalled") dumped to $dump" >>"$log"
    rm -f "$dump.stalled"
  fi
  if [ -s "$dump" ]; then
    python3 - "$dump" >>"$log" <<'PY'
import re, sys
# where each test process waits: its program counter, then its stack
frames, cur = {}, None
def frame(line):
    m = re.search(r"\('([^']+)':'?([^/]+?)'?/(\d+)", line)
    return m and f"{m.group(1)}.{m.group(2)}/{m.group(3)}"
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("="):
        cur = line.split(":", 1)[1].strip() if line.startswith(("=proc:", "=proc_stack:")) else None
        continue
    if cur and (line.startswith("Program counter") or line.startswith("Current call") or "Return addr" in line):
        f = frame(line)
        if f:
            frames.setdefault(cur, []).append(f)
for pid, fs in frames.items():
    if any(re.match(r"Elixir\.(?!Mix\.|ExUnit\.)\S*Test\.", f) for f in fs):
        print(f"EMLX stall watchdog: {pid}: " + " <- ".join(fs[:8]))
PY
  fi
  tail -n 40 "$log"
  return "$st"
}

status=0
# The files that compile the most CUDA kernels on a host whose kernel cache
# is cold come first, so that the parts (every PARTS-th file) each get one:
# session 22's cold run took 481 s for the part that held both fast_test and
# quantization_test, and more than 500 s for differential_test with fuzz_test.
heavy="differential fast quantization llm fuzz defn"
files=$( (for h in $heavy; do echo "test/emlx/${h}_test.exs"; done
  ls test/emlx/*_test.exs | grep -v nx_doctest_test | grep -vxF "$(for h in $heavy; do echo "test/emlx/${h}_test.exs"; done)"))
case "$part" in
tests)
  watched "$out/tests.log" $files
  status=$?
  ;;
tests[1-9])
  # every PARTS-th test file, for hosts where the whole tests part outlasts
  # one 10-minute call (16 cores, NVRTC's cache cold: past 540 s; 32 cores:
  # 954 tests in 570 s, EMLX.FastTest's shapes each compiling kernels)
  nth=${part#tests}
  watched "$out/$part.log" $(echo "$files" | awk -v n="$nth" -v k="${PARTS:-2}" '(NR - 1) % k == n - 1')
  status=$?
  ;;
all)
  watched "$out/tests.log"
  status=$?
  ;;
esac
if [ "$part" = all ] || [ "$part" = doctests ]; then
  EMLX_DOCTEST_ALL=1 mix test test/emlx/nx_doctest_test.exs >"$out/doctests_all.log" 2>&1
fi
# the parts, once all ran, stand for the tests part
logs=$(for k in $(seq 1 "${PARTS:-2}"); do [ -s "$out/tests$k.log" ] && echo "$out/tests$k.log"; done)
if [ "$(echo "$logs" | grep -c .)" = "${PARTS:-2}" ]; then
  cat $logs >"$out/tests.log"
fi
touch "$out/tests.log" "$out/doctests_all.log"

python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
tests = open(f"{out}/tests.log", errors="replace").read()
docs = open(f"{out}/doctests_all.log", errors="replace").read()
m = re.search(r"EMLX differential: (\d+) cases run, (\d+) passed, \d+ known failures, (\d+) reference", tests)
differential = [int(m.group(2)) + int(m.group(3)), int(m.group(1))] if m else None
# both runs of the doctests (eager and compiled), as h200.json keeps them
m = re.search(r"(\d+) doctests?, (?:\d+ tests?, )?(\d+) failures?", docs)
doctests = [int(m.group(1)) - int(m.group(2)), int(m.group(1))] if m else None
# The fuzz storm runs inside the suite: a VM crash ends its part's log
# before ExUnit's summary (each part has its own). null: no tests ran, or
# every part finished without the storm in it.
runs = tests.count("Running ExUnit")
# a part the stall watchdog stopped (see watched) is no crash
stalled = tests.count("EMLX stall watchdog: no output")
finished = len(re.findall(r"\d+ doctests?, \d+ tests?, \d+ failures?|\d+ tests?, \d+ failures?", tests)) + stalled >= runs
if runs == 0 or (finished and "fuzz (seed" not in tests):
    fuzz_crashes = None
else:
    fuzz_crashes = 0 if finished else 1
conf = {"doctests": doctests, "differential": differential, "fuzz_crashes": fuzz_crashes}
if stalled:
    conf["stalled_parts"] = stalled
json.dump(conf, open(f"{out}/conformance.json", "w"))
print("conformance:", json.dumps(conf))
PY
grep -E "^\s+[0-9]+\) doctest .*\(EMLX\.NxDoctestTest\)$" "$out/doctests_all.log" | sed 's/^ *//' | head -n 80
exit "$status"
