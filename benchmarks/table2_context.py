"""How much context do the Table 2 models use at all? A diagnostic for docs/table2.md.

Memory across segments can only lower perplexity if a model already uses the context it has inside a
segment. For each checkpoint this streams the first ``--tokens`` tokens of every held-out novel (each
from an empty state) and reports perplexity by the position of the predicted token *inside its
segment* (a token at position 0 sees only what the memory or cache carries; at 511 it also sees 511
tokens of local context), next to two context-free references computed from the training split: the
unigram perplexity (token frequencies, add-one smoothed) and the bigram perplexity (previous token
only, interpolated with the unigram).

    python benchmarks/table2_context.py checkpoints/table2/local checkpoints/table2/infini-delta \\
        --tokens 65536 --json docs/results/table2/context.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from infini_attention.data.prepare import prepare_data
from infini_attention.pretrained import load_pretrained

BANDS = ((0, 1), (1, 8), (8, 64), (64, 256), (256, 512))  # in-segment positions [start, end)


def context_free(train_ids: np.ndarray, eval_docs: list[np.ndarray], vocab: int) -> dict[str, float]:
    """Unigram and bigram (Jelinek-Mercer, lambda 0.5 with the unigram) perplexity of the eval docs."""
    uni = np.bincount(train_ids, minlength=vocab).astype(np.float64) + 1.0
    uni /= uni.sum()
    pairs = train_ids[:-1].astype(np.int64) * vocab + train_ids[1:]
    keys, counts = np.unique(pairs, return_counts=True)
    prev_total = np.bincount(train_ids[:-1], minlength=vocab).astype(np.float64)
    nll_uni = nll_bi = 0.0
    n = 0
    for ids in eval_docs:
        ids = ids.astype(np.int64)
        nll_uni += -np.log(uni[ids[1:]]).sum()
        q = ids[:-1] * vocab + ids[1:]
        at = np.searchsorted(keys, q)
        found = (at < len(keys)) & (keys[np.minimum(at, len(keys) - 1)] == q)
        c = np.where(found, counts[np.minimum(at, len(keys) - 1)], 0)
        p_bi = np.divide(c, prev_total[ids[:-1]], out=np.zeros(len(q)), where=prev_total[ids[:-1]] > 0)
        nll_bi += -np.log(0.5 * p_bi + 0.5 * uni[ids[1:]]).sum()
        n += len(ids) - 1
    return {"unigram_ppl": math.exp(nll_uni / n), "bigram_ppl": math.exp(nll_bi / n), "predictions": n}


@torch.no_grad()
def by_segment_position(model, docs: list[np.ndarray], chunk: int) -> dict[str, float]:
    N = model.config.segment_len
    nll = torch.zeros(N, dtype=torch.float64)
    count = torch.zeros(N, dtype=torch.float64)
    for ids in docs:
        ids = torch.from_numpy(ids.astype(np.int64))[None]
        state = model.init_state(1)
        for start in range(0, ids.shape[1] - 1, chunk):
            x = ids[:, start : start + chunk + 1]
            out = model(x[:, :-1], state)
            state = out.state
            loss = torch.nn.functional.cross_entropy(out.logits[0].float(), x[0, 1:], reduction="none")
            pos = (torch.arange(start, start + loss.shape[0]) % N).long()
            nll.index_add_(0, pos, loss.double())
            count.index_add_(0, pos, torch.ones_like(loss, dtype=torch.float64))
    bands = {}
    for lo, hi in BANDS:
        if hi <= N:
            bands[f"{lo}-{hi - 1}"] = math.exp(float(nll[lo:hi].sum() / count[lo:hi].sum()))
    bands["all"] = math.exp(float(nll.sum() / count.sum()))
    return bands


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="Table 2 checkpoint folders (same tokenizer)")
    p.add_argument("--tokens", type=int, default=65536, help="tokens per held-out novel (default 65536)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    first = Path(args.checkpoints[0])
    data = prepare_data("books", tokenizer=str(first / "tokenizer.json"))
    docs = [np.asarray(data.eval.doc(i)[: args.tokens]) for i in range(data.eval.num_docs)]
    train = np.concatenate([np.asarray(data.train.doc(i)) for i in range(data.train.num_docs)])
    _, tokenizer = load_pretrained(first)
    results = {"tokens_per_doc": args.tokens, "docs": len(docs)}
    results.update(context_free(train, docs, tokenizer.vocab_size))
    print(f"unigram ppl {results['unigram_ppl']:.1f}, bigram ppl {results['bigram_ppl']:.1f}")
    results["models"] = {}
    for folder in args.checkpoints:
        model, _ = load_pretrained(folder)
        model.eval()
        bands = by_segment_position(model, docs, chunk=4 * model.config.segment_len)
        # keyed by the folder as given: training checkpoints all end in step-NNNNNN
        results["models"][str(folder)] = bands
        print(folder, "  ".join(f"{k}: {v:.1f}" for k, v in bands.items()), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
