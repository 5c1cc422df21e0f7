#!/usr/bin/env bash
# The core issue's GPU check, one prepared run (about 4 minutes on an H100/H200):
#   1. `infini check --device cuda`: fast op vs reference (float64) on CUDA;
#   2. model on CUDA vs CPU float64, split-resume, bf16 memory dtype, greedy stream_generate;
#   3. the op benchmark on CUDA, float32 and bf16, T = 4K/16K/32K, N = 512 and 2048.
# Usage (repository root, a machine whose python3 has torch with CUDA):
#   OUT=/tmp/out bash scripts/gpu/core_check.sh
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/infini-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
date -u
echo "== infini check --device cuda"
timeout 120 python3 -m infini_attention.cli check --device cuda
echo "== model check"
timeout 180 python3 scripts/gpu/model_check.py cuda
for dtype in float32 bfloat16; do
  echo "== op benchmark, $dtype"
  timeout 240 python3 benchmarks/op_bench.py --device cuda --dtype "$dtype" --T 4096 16384 32768 \
    --N 512 2048 --repeats 5 --skip-naive-above 16384 --json "$OUT/op_bench_cuda_$dtype.json"
done
