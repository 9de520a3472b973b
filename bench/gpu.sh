#!/usr/bin/env bash
# The benchmark on a CUDA machine, in one short go: fp32, bf16 and fp16 against the reference lpips,
# decode included (the decode-bound pipeline) and the one-reference cache. Builds nothing.
# Needs the project installed and weights fetched (or LPIPS_GATE_WEIGHTS_DIR pointing at them).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 280 python3 bench/compare.py --device cuda --precisions bf16 fp16 --nets alex vgg \
  --sizes 64 256 1024 --json "${OUT:-.}/bench-gpu.json"
