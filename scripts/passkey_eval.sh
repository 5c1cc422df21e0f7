#!/usr/bin/env bash
# Every passkey number of a model in docs/passkey.md: by default the shipped one (since 2026-12-07 the
# repeated-keys chain's stage 8, step 36), into docs/results/passkey/chain3/stage8_1m_step36_*. The
# first chain's stage 8 (shipped before) came from
#   MODEL=checkpoints/passkey1-stage8 PREFIX=stage8_ PLOT=docs/img/passkey_heatmap.png bash scripts/passkey_eval.sh
# and earlier stages' files from
#   MODEL=runs/passkey-mix/checkpoints/step-000036 PREFIX=stage7_ bash scripts/passkey_eval.sh
#   MODEL=runs/passkey-512k PREFIX= bash scripts/passkey_eval.sh
# PART=a or PART=b runs one half (a: the main table and 1,000,000 tokens; b: the rest), so two
# single-thread processes can share the 2 cores: OMP_NUM_THREADS=1 PART=a bash ... & PART=b ...
set -euo pipefail
MODEL=${MODEL:-passkey}
OUT=${OUT:-docs/results/passkey}
PREFIX=${PREFIX-chain3/stage8_1m_step36_}
TRIALS=${TRIALS:-20}
PART=${PART:-all}
PLOT=${PLOT:-docs/img/passkey_heatmap_shipped.png}  # the main table's heatmap
mkdir -p "$OUT"
ev() { infini eval passkey --model "$1" "${@:2}"; }
if [[ $PART != b ]]; then
  # the main table: 32K..1M, key at start / middle / end
  ev "$MODEL" --lengths 32K,128K,256K,512K,1M --trials "$TRIALS" --json "$OUT/${PREFIX}table.json" --plot "$PLOT"
  # 1,000,000 tokens: the answer inside one segment (1M = 1,048,576 ends 1 token before a boundary)
  ev "$MODEL" --lengths 1000000 --trials "$TRIALS" --json "$OUT/${PREFIX}1000000.json"
fi
if [[ $PART != a ]]; then
  # short prompts, and the ablations
  ev "$MODEL" --lengths 1K,8K --trials "$TRIALS" --json "$OUT/${PREFIX}short.json"
  ev "$MODEL" --lengths 1K,8K,32K --trials "$TRIALS" --memory-off --json "$OUT/${PREFIX}memory_off.json"
  ev "$MODEL" --lengths 32K --trials "$TRIALS" --bf16 --json "$OUT/${PREFIX}bf16.json"
  # (the zero-shot row is stage 0's and does not change with later stages: stage7_zero_shot.json from
  #  ev runs/passkey-copy --lengths 1K,32K --trials 20 --json "$OUT/stage7_zero_shot.json")
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
fi
