#!/usr/bin/env bash
# The pipeline at scale on a CUDA machine, in one short go (under 5 minutes on one H200 with 16 cores):
# alex and vgg, fp32 and bf16, 512 pairs at 256px and 64 at 1024px, PNG decoding included, decoded
# in-process and in the decode pool (every core but one), against the bare reference lpips at its own
# best batch on tensors already on the GPU, in the same run; the GPU's utilisation sampled during each
# side (nvidia-smi). Writes $OUT/results-h200-decode.json ($OUT defaults to bench/). Builds nothing:
# needs the project installed and weights fetched (or LPIPS_GATE_WEIGHTS_DIR pointing at them).
#
#   bash bench/gpu.sh          on the CUDA machine
#   bash bench/gpu.sh --dry    anywhere: the same run on the CPU at tiny sizes, to check the script works
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cores=$(nproc)
if [[ "${1:-}" == "--dry" ]]; then
  exec timeout 600 python3 bench/decode.py --device cpu --nets alex vgg --sizes 64 96 --pairs 8 4 \
    --processes 0 2 --precisions fp32 bf16 --repeat 1 --ref-batches 4 8 --json "${OUT:-/tmp}/results-gpu-dry.json"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 290 python3 bench/decode.py --device cuda --nets alex vgg --sizes 256 1024 --pairs 512 64 \
  --processes 0 $((cores > 1 ? cores - 1 : 1)) --precisions fp32 bf16 --repeat 3 \
  --json "${OUT:-bench}/results-h200-decode.json"
