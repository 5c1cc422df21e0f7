#!/usr/bin/env bash
# Every summarisation number in docs/summarization.md: run from the repository root after
#   infini train --config configs/tiny-aclsum.toml            (-> runs/tiny-aclsum)
#   MODEL=runs/tiny-aclsum NAME=tiny bash scripts/summarization_eval.sh
# ACLSum test (100 papers), the paper's decoding (temperature 0.5, top-p 0.95; seeded per paper).
set -euo pipefail
MODEL=${MODEL:-runs/tiny-aclsum}
NAME=${NAME:-tiny}
OUT=${OUT:-docs/results/summarization}
LIMIT=${LIMIT:-100}          # test papers per setting
HAY_LIMIT=${HAY_LIMIT:-20}   # test papers per long-input imitation setting
mkdir -p "$OUT"
ev() { infini eval summarize --model "$MODEL" --data aclsum --split test "$@"; }
# the lead baseline (no model)
infini eval summarize --data aclsum --split test --baseline lead --json "$OUT/lead_test.json"
# Rouge against input length (the paper's Figure 4 shape): the first K tokens of each paper, then the
# whole paper; memory on, and gated off (local attention within the last segment only)
for K in 256 1024 2048 3584 8192 full; do
  cut=(); [ "$K" = full ] || cut=(--max-input-tokens "$K")
  ev --limit "$LIMIT" "${cut[@]}" --json "$OUT/${NAME}_input_${K}.json"
  ev --limit "$LIMIT" "${cut[@]}" --memory-off --json "$OUT/${NAME}_input_${K}_memory_off.json"
done
# the long-input imitation: each test paper (whole) among other ACLSum papers, in 128K and 512K prompts
for D in 0 0.5 1; do
  ev --limit "$HAY_LIMIT" --haystack-tokens 128K --haystack-depth "$D" --json "$OUT/${NAME}_haystack_128K_d${D}.json"
done
ev --limit "$HAY_LIMIT" --haystack-tokens 512K --haystack-depth 1 --json "$OUT/${NAME}_haystack_512K_d1.json"
ev --limit "$HAY_LIMIT" --haystack-tokens 512K --haystack-depth 0.5 --json "$OUT/${NAME}_haystack_512K_d0.5.json"
# the shipped default model before fine-tuning (zero-shot), at the fine-tuning input length
MODEL=default ev --limit "$LIMIT" --max-input-tokens 3584 --json "$OUT/default_input_3584.json"
# the figure: Rouge against input length
python scripts/plot_summarization.py "$OUT" "$NAME" docs/img/summarization_rouge_vs_length.png
