#!/usr/bin/env bash
# On a GPU machine without network, with the .gpu/ folder that bench/gpu_bundle.sh packed: install its wheels
# into /tmp/site (the machine's own torch stays), run `make gpu-check`, and copy the JSON into the folder named by OUT, when set.
# Arguments go to bench/gpu_check.py, e.g. `bash bench/gpu_run.sh --parts qlora_7b bf16_7b`.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD NEFTLIB_CACHE_DIR=$PWD/.gpu/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft, bitsandbytes, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', bitsandbytes.__version__, '| accelerate', accelerate.__version__)"
# 540 s for the parts: with the install and start-up, the whole check stays within 10 minutes (BUDGET overrides)
if command -v make >/dev/null; then
  make --no-print-directory gpu-check PYTHON=python3 ARGS="--budget ${BUDGET:-540} $*"
else
  python3 bench/gpu_check.py --budget "${BUDGET:-540}" "$@"
fi
rc=$?
if [ -n "${OUT:-}" ] && [ -f bench/results/gpu_check.json ]; then cp bench/results/gpu_check.json "$OUT"/; fi
exit $rc
