#!/usr/bin/env bash
# Every passkey number of the shipped model in docs/passkey.md: run from the repository root after
# training (configs/passkey-copy.toml -> passkey.toml -> passkey-long.toml -> passkey-8k.toml ->
# passkey-128k.toml -> passkey-512k.toml), or with MODEL=passkey for the shipped copy.
#   MODEL=runs/passkey-512k OUT=docs/results/passkey bash scripts/passkey_eval.sh
set -euo pipefail
MODEL=${MODEL:-runs/passkey-512k}
OUT=${OUT:-docs/results/passkey}
TRIALS=${TRIALS:-20}
mkdir -p "$OUT"
ev() { infini eval passkey --model "$1" "${@:2}"; }
# the main table: 32K..1M, key at start / middle / end
ev "$MODEL" --lengths 32K,128K,256K,512K,1M --trials "$TRIALS" --json "$OUT/table.json" --plot docs/img/passkey_heatmap.png
# 1,000,000 tokens: the answer inside one segment (1M = 1,048,576 ends 1 token before a boundary)
ev "$MODEL" --lengths 1000000 --trials "$TRIALS" --json "$OUT/1000000.json"
# short prompts, and the ablations
ev "$MODEL" --lengths 1K,8K --trials "$TRIALS" --json "$OUT/short.json"
ev "$MODEL" --lengths 1K,8K,32K --trials "$TRIALS" --memory-off --json "$OUT/memory_off.json"
ev runs/passkey-copy --lengths 1K,32K --trials "$TRIALS" --json "$OUT/zero_shot.json"  # stage 0 (zero-shot)
ev "$MODEL" --lengths 32K --trials "$TRIALS" --bf16 --json "$OUT/bf16.json"
# harder haystacks (eval/haystacks.py): book text as filler, a second number, the key reworded
for h in books two-keys rephrased; do
  ev "$MODEL" --haystack "$h" --lengths 32K,128K --trials "$TRIALS" --json "$OUT/haystack_${h}.json"
done
ev "$MODEL" --haystack two-keys --lengths 1000000 --trials 10 --json "$OUT/haystack_two-keys_1000000.json"
# beyond 1M: key at the start (the farthest), fewer trials
ev "$MODEL" --lengths 2M,4M --positions start --trials 5 --json "$OUT/long.json"
ev "$MODEL" --lengths 10M --positions start --trials 1 --json "$OUT/10m.json"
# peak resident memory, one process per length
for n in 32K 1M; do
  /usr/bin/time -v infini eval passkey --model "$MODEL" --lengths $n --positions start --trials 1 \
    2>&1 | grep -E "Maximum resident|Elapsed" | sed "s/^/$n: /"
done | tee "$OUT/rss.txt"
