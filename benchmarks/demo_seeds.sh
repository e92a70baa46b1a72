#!/usr/bin/env bash
# Three seeds of the demo configuration and the contrast "did w/ SAM forget less than w/o SAM, beyond
# seed noise?" (docs/demo.md, "Three seeds"). Usage: bash benchmarks/demo_seeds.sh WORK_DIR [compare options]
# Seed 0 is `cfbench demo` itself; seeds 1 and 2 are `cfbench pair --seeds 1,2` with the demo's
# hyper-parameters, scored like the demo (offline suite, 50 documents per task, 2 per MMLU subject).
# Everything is cached in WORK_DIR/results: a rerun only recomputes the report.
set -euo pipefail
S=$(realpath -m "${1:?usage: demo_seeds.sh WORK_DIR [compare options]}")
shift
mkdir -p "$S"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LIMITS=(--suite offline --limit 50 --task-limit mmlu=2)
cfbench demo --seed 0 --out "$S/seed-0" --results "$S/results" > "$S/seed-0.log"
cfbench pair smollm2-135m --data builtin:arithmetic --out "$S/pairs" --seeds 1,2 --sam-optimizer sam --rho 0.05 \
  --lr 3e-4 --batch-size 8 --micro-batch 8 --max-length 128 --warmup 0.1 --max-steps 8 --heldout 100 \
  --results "$S/results" --quiet > "$S/pairs.log"
for s in 1 2; do for r in wo_sam w_sam; do
  cfbench eval "$S/pairs/seed-$s/$r" "${LIMITS[@]}" --results "$S/results" > /dev/null
done; done
cfbench compare ckpt:smollm2-135m \
  "ckpt:$S/seed-0/pair/wo_sam" "ckpt:$S/pairs/seed-1/wo_sam" "ckpt:$S/pairs/seed-2/wo_sam" \
  "ckpt:$S/seed-0/pair/w_sam" "ckpt:$S/pairs/seed-1/w_sam" "ckpt:$S/pairs/seed-2/w_sam" \
  --labels "SmolLM2-135M-Instruct,w/o SAM s0,w/o SAM s1,w/o SAM s2,w/ SAM s0,w/ SAM s1,w/ SAM s2" \
  --group "w/o SAM=w/o SAM s0,w/o SAM s1,w/o SAM s2" --group "w/ SAM=w/ SAM s0,w/ SAM s1,w/ SAM s2" \
  --contrast "w/ SAM-w/o SAM" "${LIMITS[@]}" --noise-floor dtype --ppl lambada --ppl-limit 64 \
  --results "$S/results" "$@"
