#!/usr/bin/env bash
# The effect of infini_attention.malloc.keep_freed_memory (what the infini CLI applies) on CPU, each
# case in its own process, alternating (docs/performance.md, "glibc's thresholds"):
#   bash scripts/malloc_bench.sh > docs/results/perf/malloc_bench.txt 2>&1     # ~9 min on 2 cores
set -euo pipefail
OUT=${OUT:-docs/results/perf}
date -u
# 1. the op against full attention, default malloc and kept memory, twice each
for round in 1 2; do
  for flag in "" "--keep-freed-memory"; do
    echo "== op_bench round $round ${flag:-(default malloc)}"
    python benchmarks/op_bench.py --T 16384 32768 --N 512 --skip-naive-above 4096 $flag \
      --json "$OUT/op_bench_malloc_${round}${flag:+_keep}.json" | grep -E "^\|| repeat |^check"
  done
done
# 2. a training step of the books model (default: 3.3M parameters, N = 256), 8K tokens, full BPTT
for round in 1 2; do for flag in "" "--keep-freed-memory"; do
  echo "== train_step round $round ${flag:-(default malloc)}"
  python benchmarks/train_step.py --model default --tokens 8192 --segment-lens 256 --repeats 3 $flag
done; done
# 3. peak RSS of a stream (the model), 16K and 1M tokens, plain and kept
for mode in plain keep; do for n in 16384 1048576; do python benchmarks/rss_trim.py $n $mode; done; done
# 4. the passkey evaluation through the CLI (kept by default) and with INFINI_MALLOC=system
for mode in keep system; do for n in 32K 1M; do
  /usr/bin/time -v env INFINI_MALLOC=$mode infini eval passkey --model passkey --lengths $n \
    --positions start --trials 1 2>&1 | grep -E "Maximum resident|Elapsed|tokens/s" | sed "s/^/$mode $n: /"
done; done
date -u
