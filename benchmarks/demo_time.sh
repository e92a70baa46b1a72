#!/usr/bin/env bash
# The demo's wall time on a fresh clone: clone, scripts/install.sh, then `cfbench demo` with an empty
# cfbench cache (so the GGUF -> HF conversion of the built-in model is included), each timed alone.
#   bash benchmarks/demo_time.sh [REPO]        (REPO defaults to this checkout)
# Run it alone on the machine (check `uptime`): the demo is CPU-bound and shares nothing with other jobs.
set -euo pipefail
repo=${1:-$(cd "$(dirname "$0")/.." && pwd)}
work=$(mktemp -d)
git clone -q "$repo" "$work/cfbench"
cd "$work/cfbench"
t0=$(date +%s)
bash scripts/install.sh >"$work/install.log" 2>&1
t1=$(date +%s)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 CFBENCH_CACHE="$work/cache"
mkdir -p "$work/run" && cd "$work/run"
"$work/cfbench/.venv/bin/cfbench" demo >"$work/demo.out" 2>"$work/demo.err"
t2=$(date +%s)
echo "| step | wall s |"
echo "|---|---|"
echo "| scripts/install.sh | $((t1 - t0)) |"
echo "| cfbench demo (empty cache) | $((t2 - t1)) |"
echo "| total from a fresh clone | $((t2 - t0)) |"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); outputs in $work"
