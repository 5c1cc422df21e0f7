#!/usr/bin/env bash
# Every summarisation number in docs/summarization.md: run from the repository root after
#   infini train --config configs/tiny-aclsum.toml            (-> runs/tiny-aclsum)
#   MODEL=runs/tiny-aclsum NAME=tiny bash scripts/summarization_eval.sh
# SmolLM2 (configs/smollm2-aclsum-cpu.toml) is ~30 s a paper on 1 core; the settings run for it are
# listed in docs/summarization.md. The figure of both: scripts/plot_summarization.py OUT tiny,smollm2 FIG
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
# (depth made no difference at 128K, so 512K is run once, the paper last: ~90 s a paper on 1 core)
ev --limit "$HAY_LIMIT" --haystack-tokens 512K --haystack-depth 1 --json "$OUT/${NAME}_haystack_512K_d1.json"
# the shipped default model before fine-tuning (zero-shot), at the fine-tuning input length
MODEL=default ev --limit "$LIMIT" --max-input-tokens 3584 --json "$OUT/default_input_3584.json"
# the figure: Rouge against input length
python scripts/plot_summarization.py "$OUT" "$NAME" "docs/img/summarization_${NAME}.png"
