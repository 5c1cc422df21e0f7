#!/usr/bin/env bash
# The linear-update ablation of the passkey recipe (docs/passkey.md, "Linear against delta"):
# stages 0-3 exactly as configs/passkey-{copy,,-long,-8k}.toml, but with update = "linear"
# (eq. 8 instead of eq. 9) from the start. The configs are derived from the delta ones here, so
# the two chains differ in nothing else; runs go to runs/linear/.
#   bash scripts/passkey_linear.sh            # ~30 min on 2 CPU cores
set -euo pipefail
mkdir -p runs/linear/configs
for stem in passkey-copy passkey passkey-long passkey-8k; do
    cfg="runs/linear/configs/$stem.toml"
    sed -e 's/^update = "delta".*/update = "linear"   # the ablation: eq. (8)/' \
        -e 's#^init_from = "runs/#init_from = "runs/linear/#' "configs/$stem.toml" > "$cfg"
    if [ "$stem" = passkey-copy ] && ! grep -q '^update = "linear"' "$cfg"; then
        echo "passkey_linear.sh: configs/$stem.toml has no 'update = \"delta\"' line to replace" >&2
        exit 1
    fi
    if [ -d "runs/linear/$stem/checkpoints" ]; then
        infini train --config "$cfg" --out "runs/linear/$stem" --resume
    else
        infini train --config "$cfg" --out "runs/linear/$stem"
    fi
done
# the same cells as the delta chain's stage 3 (docs/results/passkey/stage3_table.json, stage3_short.json)
infini eval passkey --model runs/linear/passkey-8k --lengths 1K,8K,32K,128K --trials 20 \
    --json "${OUT:-docs/results/passkey}/linear_stage3.json"
