"""The shipped Table 2 checkpoints (`checkpoints/table2/<variant>/`): each loads with `load_pretrained`
as the variant it claims to be, says how it was trained, and still gives the perplexity recorded when it
was committed (a regression test: a change to any attention variant, to loading or to the tokenizer that
moves these numbers fails here). The full evaluation is `infini bench table2 --checkpoints
checkpoints/table2` (docs/table2.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from infini_attention.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "checkpoints" / "table2"
TEXT = ROOT / "data" / "excerpt" / "eval" / "austen-emma.txt"  # held out: no variant trained on Austen
TOKENS = 2048  # 4 segments of 512: the memory (or cache, or memory tokens) is read 3 times

# variant -> (attention, update or None, perplexity of the first TOKENS predictions, recorded 2026-11-28)
EXPECTED = {
    "infini-linear": ("infini", "linear", 582.7933),
    "infini-delta": ("infini", "delta", 555.2675),
    "transformer-xl": ("transformer-xl", None, 542.4797),
    "local": ("local", None, 555.7371),
    "memorizing": ("memorizing", None, 545.9417),
    "rmt": ("rmt", None, 528.9902),
}


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_shipped_checkpoint(variant):
    attention, update, ppl = EXPECTED[variant]
    folder = SHIPPED / variant
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 5_000_000  # what the repository accepts
    model, tokenizer = load_pretrained(folder)
    assert model.config.attention == attention
    if update is not None:
        assert model.config.update == update
    trained = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    assert trained["run"]["model"]["attention"] == attention and trained["steps"] > 0

    ids = torch.tensor(tokenizer.encode(TEXT.read_text(encoding="utf-8"))[: TOKENS + 1])[None]
    with torch.no_grad():
        logits = model(ids[:, :-1], model.init_state(1)).logits
    got = math.exp(torch.nn.functional.cross_entropy(logits[0].float(), ids[0, 1:]).item())
    assert got == pytest.approx(ppl, rel=2e-3)
