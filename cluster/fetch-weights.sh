#!/usr/bin/env bash
# Weights a GPU config reads from each node's disk, fetched once when the image or node is built:
# the ImageNet ViT-B/8 encoder of configs/train-promptiqa-gpu.yaml (timm loads encoder weights from a file).
# Every other model comes from Hugging Face (MLLMs, open_clip) or the bucket (SAM2) when a job starts.
set -euo pipefail
dest=/opt/rayiqa/weights
sudo mkdir -p "$dest" && sudo chown "$(id -u)" "$dest"
python - "$dest" <<'PY'
import shutil, sys
from huggingface_hub import hf_hub_download

shutil.copy(hf_hub_download("timm/vit_base_patch8_224.augreg2_in21k_ft_in1k", "model.safetensors"),
            f"{sys.argv[1]}/vit_base_patch8_224.safetensors")
PY
