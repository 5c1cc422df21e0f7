#!/usr/bin/env bash
# The performance issue's benchmarks on CUDA (bf16), one prepared run of at most 8 minutes (the
# timeouts below add up to 465 s, kill grace included; about 3 minutes expected on an H100):
#   1. op_bench.py, bf16, T = 4K/16K/32K, N = 512 and 2048: fast op vs naive vs full SDPA;
#   2. gpu_bench.py layer: Infini layer fwd+bwd vs a local-only SDPA layer (target <= 1.15x);
#   3. gpu_bench.py train: training-step FLOP/s over the bf16 matmul rate (target >= 40%);
#   4. gpu_bench.py memory decode: peak memory streaming 16K/128K/1M tokens (<= 1.1x), decode
#      latency after 1K and 1M tokens (<= 1.1x);
#   5. peer_bench.py --device cuda, only where infini_transformer_pytorch is importable (the lent
#      machine cannot fetch it: carry its wheels in .whl/, they are installed to /tmp/peer-site);
#   6. one table of all of it, printed and written to $OUT/bench.md.
# Every part runs under its own timeout, and a failed or timed-out part does not stop the others;
# each writes its JSON to $OUT as it goes (7 files in all, with the log below).
# Usage (repository root, a machine whose python3 has torch with CUDA):
#   export OUT=/tmp/infini-gpu; mkdir -p $OUT; set -o pipefail
#   bash scripts/gpu/bench.sh 2>&1 | tee $OUT/bench.log
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/infini-gpu}
mkdir -p "$OUT"
STATUS=()

part() {  # part NAME SECONDS COMMAND...: run COMMAND under a timeout and record how it ended
  local name=$1 limit=$2 start=$SECONDS rc how
  shift 2
  echo "== $name (limit ${limit} s)"
  timeout -k 5 "$limit" "$@"
  rc=$?
  case $rc in 0) how=ok ;; 124 | 137) how="timed out" ;; *) how=failed ;; esac
  STATUS+=("$name: $how (exit $rc, $((SECONDS - start)) s)")
  echo "-- ${STATUS[-1]}"
}

timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 20 python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda, \
  torch.cuda.get_device_name())"
date -u

part "op benchmark, bf16" 90 python3 benchmarks/op_bench.py --device cuda --dtype bfloat16 \
  --T 4096 16384 32768 --N 512 2048 --repeats 5 --skip-naive-above 16384 --json "$OUT/op_bench_cuda_bf16.json"
part "layer vs local-only SDPA" 60 python3 benchmarks/gpu_bench.py --parts layer --json "$OUT/gpu_layer.json"
part "training efficiency" 55 python3 benchmarks/gpu_bench.py --parts train --json "$OUT/gpu_train.json"
part "streaming memory and decode" 95 python3 benchmarks/gpu_bench.py --parts memory decode \
  --json "$OUT/gpu_stream.json"

peer=(env PYTHONPATH=src:/tmp/peer-site python3)
if compgen -G ".whl/infini_transformer_pytorch-*.whl" >/dev/null; then
  timeout 20 python3 -m pip install -q --no-index --no-deps --target /tmp/peer-site .whl/*.whl
fi
if timeout 15 "${peer[@]}" -c "import infini_transformer_pytorch" 2>/dev/null; then
  part "against infini-transformer-pytorch" 60 "${peer[@]}" benchmarks/peer_bench.py --device cuda \
    --json "$OUT/peer_cuda.json"
else
  echo "== against infini-transformer-pytorch: skipped: not installed (cannot import infini_transformer_pytorch)"
  STATUS+=("against infini-transformer-pytorch: skipped: not installed")
fi

echo "== one table (also $OUT/bench.md)"
files=()
for f in op_bench_cuda_bf16 gpu_layer gpu_train gpu_stream peer_cuda; do
  [ -f "$OUT/$f.json" ] && files+=("$OUT/$f.json")
done
if [ ${#files[@]} -gt 0 ]; then
  timeout 15 python3 benchmarks/gpu_bench.py --combine "${files[@]}" --markdown "$OUT/bench.md"
else
  echo "no results in $OUT"
fi
printf '%s\n' "${STATUS[@]}"
date -u
