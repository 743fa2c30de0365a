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

status=0
files=$(ls test/emlx/*_test.exs | grep -v nx_doctest_test)
case "$part" in
tests)
  mix test $files 2>&1 | tee "$out/tests.log" | tail -n 40
  status=${PIPESTATUS[0]}
  ;;
tests[1-9])
  # every PARTS-th test file, for hosts where the whole tests part outlasts
  # one 10-minute call (16 cores, NVRTC's cache cold: past 540 s; 32 cores:
  # 954 tests in 570 s, EMLX.FastTest's shapes each compiling kernels)
  nth=${part#tests}
  mix test $(echo "$files" | awk -v n="$nth" -v k="${PARTS:-2}" '(NR - 1) % k == n - 1') 2>&1 |
    tee "$out/$part.log" | tail -n 40
  status=${PIPESTATUS[0]}
  ;;
all)
  mix test 2>&1 | tee "$out/tests.log" | tail -n 40
  status=${PIPESTATUS[0]}
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
finished = len(re.findall(r"\d+ doctests?, \d+ tests?, \d+ failures?|\d+ tests?, \d+ failures?", tests)) >= runs
if runs == 0 or (finished and "fuzz (seed" not in tests):
    fuzz_crashes = None
else:
    fuzz_crashes = 0 if finished else 1
conf = {"doctests": doctests, "differential": differential, "fuzz_crashes": fuzz_crashes}
json.dump(conf, open(f"{out}/conformance.json", "w"))
print("conformance:", json.dumps(conf))
PY
grep -E "^\s+[0-9]+\) doctest .*\(EMLX\.NxDoctestTest\)$" "$out/doctests_all.log" | sed 's/^ *//' | head -n 80
exit "$status"
