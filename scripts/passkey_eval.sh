#!/usr/bin/env bash
# Every passkey number of a model in docs/passkey.md: by default the shipped one (stage 7), into
# docs/results/passkey/stage7_*; stage 6's files (no prefix) came from
#   MODEL=runs/passkey-512k PREFIX= bash scripts/passkey_eval.sh
set -euo pipefail
MODEL=${MODEL:-passkey}
OUT=${OUT:-docs/results/passkey}
PREFIX=${PREFIX-stage7_}
TRIALS=${TRIALS:-20}
mkdir -p "$OUT"
ev() { infini eval passkey --model "$1" "${@:2}"; }
# the main table: 32K..1M, key at start / middle / end
ev "$MODEL" --lengths 32K,128K,256K,512K,1M --trials "$TRIALS" --json "$OUT/${PREFIX}table.json" --plot docs/img/passkey_heatmap.png
# 1,000,000 tokens: the answer inside one segment (1M = 1,048,576 ends 1 token before a boundary)
ev "$MODEL" --lengths 1000000 --trials "$TRIALS" --json "$OUT/${PREFIX}1000000.json"
# short prompts, and the ablations
ev "$MODEL" --lengths 1K,8K --trials "$TRIALS" --json "$OUT/${PREFIX}short.json"
ev "$MODEL" --lengths 1K,8K,32K --trials "$TRIALS" --memory-off --json "$OUT/${PREFIX}memory_off.json"
ev runs/passkey-copy --lengths 1K,32K --trials "$TRIALS" --json "$OUT/${PREFIX}zero_shot.json"  # stage 0 (zero-shot)
ev "$MODEL" --lengths 32K --trials "$TRIALS" --bf16 --json "$OUT/${PREFIX}bf16.json"
# harder haystacks (eval/haystacks.py): book text as filler, a second number, the key reworded
for h in books two-keys rephrased; do
  ev "$MODEL" --haystack "$h" --lengths 32K,128K --trials "$TRIALS" --json "$OUT/${PREFIX}haystack_${h}.json"
done
ev "$MODEL" --haystack two-keys --lengths 1000000 --trials 10 --json "$OUT/${PREFIX}haystack_two-keys_1000000.json"
# beyond 1M: key at the start (the farthest), fewer trials
ev "$MODEL" --lengths 2M,4M --positions start --trials 5 --json "$OUT/${PREFIX}long.json"
ev "$MODEL" --lengths 10M --positions start --trials 1 --json "$OUT/${PREFIX}10m.json"
# peak resident memory, one process per length
for n in 32K 1M; do
  /usr/bin/time -v infini eval passkey --model "$MODEL" --lengths $n --positions start --trials 1 \
    2>&1 | grep -E "Maximum resident|Elapsed" | sed "s/^/$n: /"
done | tee "$OUT/${PREFIX}rss.txt"
