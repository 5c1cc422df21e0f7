#!/usr/bin/env bash
# GPU check of the training side (about 2 minutes): the smoke config on CUDA in float32 and with
# bf16 autocast, a resume, evaluation and loading of the result.
#   OUT=/tmp/out bash scripts/gpu/train_check.sh
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 INFINI_CACHE=/tmp/infini-cache
OUT=${OUT:-/tmp/infini-gpu}
infini() { python3 -m infini_attention.cli "$@"; }
nvidia-smi --query-gpu=name --format=csv,noheader
sed 's/^autocast = .*//; s/^\[train\]/[train]\nautocast = "bf16"/' configs/smoke.toml > /tmp/smoke_bf16.toml
for cfg in configs/smoke.toml /tmp/smoke_bf16.toml; do
  run=/tmp/run-$(basename "$cfg" .toml)
  echo "== $cfg: 30 steps, then resume to 60"
  infini train --config "$cfg" --out "$run" --max-steps 30 2>&1 | grep -E "device|step 30|checkpoint" | head -5
  infini train --config "$cfg" --out "$run" --resume 2>&1 | grep -E "resum|step 60|final" | head -5
  infini eval ppl --model "$run" --text data/excerpt/eval/austen-emma.txt --max-tokens 4000 --device cuda
done
python3 - <<'PY'
import torch
from infini_attention import load_pretrained
m, t = load_pretrained("/tmp/run-smoke_bf16", device="cuda")
ids = torch.tensor([t.encode("It is a truth universally acknowledged")], device="cuda")
print("loaded on", next(m.parameters()).device, "logits finite:", bool(torch.isfinite(m(ids).logits).all()))
PY
cp /tmp/run-smoke_bf16/metrics.csv "$OUT/smoke_bf16_metrics.csv" 2>/dev/null || true
