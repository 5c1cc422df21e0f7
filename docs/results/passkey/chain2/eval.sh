#!/bin/bash
# Evaluate the repeated-keys chain's final model: two single-thread processes.
cd /work/main; . .venv/bin/activate
export INFINI_CACHE=/tmp/infini-cache OMP_NUM_THREADS=1
M=${M:-runs/chain7}; O=docs/results/passkey/chain2
ev() { infini eval passkey --model "$M" "$@"; }
if [ "$PART" = a ]; then
  ev --lengths 1M --trials 20 --json $O/table_1m.json > $O/table_1m.log 2>&1
  ev --lengths 2M --positions start --trials 5 --json $O/long_2m.json > $O/long_2m.log 2>&1
  ev --lengths 1000000 --trials 10 --json $O/1000000.json > $O/1000000.log 2>&1
else
  ev --lengths 32K,128K,256K,512K --trials 20 --json $O/table_32k_512k.json > $O/table_32k_512k.log 2>&1
  ev --lengths 1K,8K --trials 20 --json $O/short.json > $O/short.log 2>&1
  ev --lengths 1K,8K,32K --trials 20 --memory-off --json $O/memory_off.json > $O/memory_off.log 2>&1
  ev --lengths 4M --positions start --trials 5 --json $O/long_4m.json > $O/long_4m.log 2>&1
  ev --lengths 10M --positions start --trials 1 --json $O/long_10m.json > $O/long_10m.log 2>&1
fi
echo "$(date -u +%H:%M:%S) eval part $PART done" >> runs/chain/times.log
# step 36 (stage 7 resumed from step 24; M=runs/chain7-step36, a copy of its step-36 checkpoint):
#   infini eval passkey --model $M --lengths 1M --trials 10 --json $O/step36_1m.json
#   infini eval passkey --model $M --lengths 256K,512K --trials 10 --json $O/step36_256k_512k.json
# step 48 (the resumed run's end; M=runs/chain7/checkpoints/step-000048):
#   infini eval passkey --model $M --lengths 1M --positions start --trials 10 --json $O/step48_1m_start.json
#   infini eval passkey --model $M --lengths 1M --positions middle,end --trials 10 --json $O/step48_1m_middle_end.json
