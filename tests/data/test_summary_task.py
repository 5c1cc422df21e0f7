"""Summarisation fine-tuning rows: the evaluation's prompt, the summary (+EOS) as the only target,
documents cut before the suffix or the summary, resumable and shared across ranks like the others."""

from __future__ import annotations

import pytest
import torch

from helpers import ByteTokenizer
from infini_attention.data.packing import IGNORE, PAD_ID
from infini_attention.data.summaries import SummaryDoc
from infini_attention.data.summary_task import MIN_SUMMARY_TOKENS, SummarySampler
from infini_attention.eval.summarize import PROMPT_SUFFIX, build_prompt
from infini_attention.train.config import DataConfig

TOK = ByteTokenizer()  # ids = bytes, EOS = 256
SUFFIX = TOK.encode(PROMPT_SUFFIX)


def docs(n: int = 7) -> list[SummaryDoc]:
    """Documents and summaries of different lengths, each recognisable by its letters."""
    out = []
    for i in range(n):
        letter = chr(ord("a") + i)
        out.append(SummaryDoc(str(i), f"{letter}-doc " * (5 + 9 * i), f"{letter.upper()} sum. " * (3 + i)))
    return out


def sampler(**kw) -> SummarySampler:
    args = {"seq_len": 512, "segment_len": 32, "batch_size": 3, "seed": 4}
    args.update(kw)
    items = args.pop("docs", None) or docs()
    return SummarySampler(TOK, items, **args)


def check_row(b, r: int, doc: SummaryDoc, doc_tokens: int, target: list[int]) -> None:
    """Row ``r`` of ``b`` is build_prompt(first ``doc_tokens`` of the document) + target, then padding,
    with labels on exactly the target's tokens."""
    prompt = build_prompt(TOK, doc.document, doc_tokens)
    real = int((~b.pad_mask[r]).sum())
    assert real == len(prompt) + len(target)
    assert b.input_ids[r, :real].tolist() == prompt + target
    assert (b.input_ids[r, real:] == PAD_ID).all() and b.pad_mask[r, real:].all()
    assert b.doc_start[r].tolist() == [True] + [False] * (b.input_ids.shape[1] - 1)
    at = (b.labels[r] != IGNORE).nonzero().flatten().tolist()
    assert at == list(range(len(prompt) - 1, real - 1))  # the suffix's last token predicts the first
    assert b.labels[r, at].tolist() == target


def test_rows_are_prompt_then_summary_and_eos():
    s = sampler()
    for step in range(4):
        indices = s.global_indices(step)
        b = s.next_batch()
        for r, i in enumerate(indices):
            doc = s.docs[i]
            check_row(b, r, doc, None, TOK.encode(doc.summary) + [TOK.eos_id])


def test_no_eos_without_one():
    class NoEos(ByteTokenizer):
        eos_id = None

    s = SummarySampler(NoEos(), docs(2), 256, 32, 2, 0)
    i = s.global_indices(0)[0]
    b = s.next_batch()
    check_row(b, 0, s.docs[i], None, TOK.encode(s.docs[i].summary))


def test_length_is_whole_segments_of_the_longest_row():
    s = sampler(seq_len=512, segment_len=32, batch_size=2)
    lengths = set()
    for step in range(8):
        longest = max(sum(map(len, s.fit(i))) for i in s.global_indices(step))
        L = s.next_batch().input_ids.shape[1]
        assert L % 32 == 0 and L <= 512 and L - 32 < longest <= L
        lengths.add(L)
    assert len(lengths) > 1  # short batches stay short


def test_long_documents_are_cut_never_the_suffix():
    long = [SummaryDoc("0", "word " * 200, "The summary. " * 3)]
    target = TOK.encode(long[0].summary) + [TOK.eos_id]
    s = sampler(docs=long, seq_len=128, batch_size=1)
    b = s.next_batch()
    assert b.input_ids.shape[1] == 128 and not b.pad_mask.any()
    check_row(b, 0, long[0], 128 - len(SUFFIX) - len(target), target)  # the document's beginning
    # max_input_tokens cuts shorter still
    b = sampler(docs=long, seq_len=128, batch_size=1, max_input_tokens=20).next_batch()
    check_row(b, 0, long[0], 20, target)
    assert b.input_ids.shape[1] == 96  # 20 + 12 + 40 tokens, in segments of 32


def test_summary_cut_only_when_an_empty_document_leaves_no_room():
    huge = [SummaryDoc("0", "word " * 50, "x" * 300)]
    b = sampler(docs=huge, seq_len=128, batch_size=1).next_batch()
    check_row(b, 0, huge[0], 0, TOK.encode("x" * (128 - len(SUFFIX))))  # the suffix whole, no EOS


def test_deterministic_epochs_and_exact_resume():
    a, b = sampler(), sampler()
    for _ in range(5):
        x, y = a.next_batch(), b.next_batch()
        assert all(torch.equal(u, v) for u, v in zip(x.as_tuple(), y.as_tuple(), strict=True))
    s = sampler(batch_size=7)
    assert sorted(s.global_indices(0)) == list(range(7))  # an epoch serves every document once
    assert s.global_indices(0) != s.global_indices(1) or s.global_indices(1) != s.global_indices(2)
    assert sampler(seed=5).global_indices(0) != sampler(seed=4).global_indices(0)

    whole = sampler()
    batches = [whole.next_batch() for _ in range(6)]
    part = sampler()
    for _ in range(3):
        part.next_batch()
    resumed = sampler()
    resumed.load_state_dict(part.state_dict())
    for want in batches[3:]:
        got = resumed.next_batch()
        assert all(torch.equal(u, v) for u, v in zip(want.as_tuple(), got.as_tuple(), strict=True))


def test_rank_shares_split_the_global_batch():
    one = sampler(batch_size=4)
    ranks = [sampler(batch_size=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        glob = one.next_batch()
        for r, s in enumerate(ranks):
            mine = s.next_batch()
            for g, m in zip(glob.as_tuple(), mine.as_tuple(), strict=True):
                assert torch.equal(g[r::2], m)
    # a rank of another world size goes on from the same global position
    other = sampler(batch_size=1, rank=3, world_size=4)
    other.load_state_dict(ranks[0].state_dict())
    glob = one.next_batch()
    assert torch.equal(other.next_batch().input_ids, glob.input_ids[3:4])


def test_bad_settings_and_states():
    with pytest.raises(ValueError, match="cannot hold the prompt suffix"):
        sampler(seq_len=len(SUFFIX) + MIN_SUMMARY_TOKENS - 1, segment_len=1)
    sampler(seq_len=len(SUFFIX) + MIN_SUMMARY_TOKENS, segment_len=1)  # just enough
    with pytest.raises(ValueError, match="max_input_tokens must be positive"):
        sampler(max_input_tokens=0)
    with pytest.raises(ValueError, match="no summarisation documents"):
        SummarySampler(TOK, [], 256, 32, 1, 0)
    with pytest.raises(ValueError, match="multiple of segment_len"):
        sampler(seq_len=500)
    state = sampler(seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1"):
        sampler(seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="global batch of 3 rows"):
        sampler(batch_size=2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="num_docs=7"):
        sampler(docs=docs(3), seed=1).load_state_dict(state)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"task": "summarize", "summary_data": "papers.csv"}, 'must be "aclsum" or a .jsonl file'),
        ({"task": "summarize", "summary_split": "dev"}, r"summary_split must be one of \('train'"),
        ({"task": "summarize", "summary_max_input_tokens": -1}, "max_input_tokens must be an int >= 0"),
        ({"task": "summarize", "summary_data": ""}, "summary_data must be a non-empty string"),
        ({"task": "summarize", "summary_summary_field": "tldr"}, "applies to a .jsonl summary_data"),
        ({"task": "summarize", "summary_data": "a.jsonl", "summary_split": "val"}, "applies to aclsum"),
        ({"task": "passkey", "summary_split": "val"}, 'summary_split only applies to task = "summarize"'),
        ({"lm_every": 2}, 'lm_every only applies to task = "passkey" or "summarize"'),
    ],
)
def test_bad_config(fields, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**fields)


def test_good_config():
    d = DataConfig(task="summarize", lm_every=3, summary_data="x.jsonl", summary_document_field="text")
    assert d.summary_summary_field == "summary" and d.summary_max_input_tokens == 0


def test_bpe_rows_match_the_evaluation_prompt():
    """With a real BPE the prompt is still exactly ``build_prompt``'s (document and suffix encoded apart)."""
    from infini_attention.data.tokenizer import Tokenizer
    from infini_attention.pretrained import resolve_checkpoint

    tok = Tokenizer.from_file(resolve_checkpoint("default") / "tokenizer.json")
    doc = SummaryDoc("0", "Infini-attention streams a long document.\n\nIt keeps a memory.", "A memory.")
    b = SummarySampler(tok, [doc], 256, 64, 1, 0, max_input_tokens=5).next_batch()
    prompt, target = build_prompt(tok, doc.document, 5), tok.encode(doc.summary) + [tok.eos_id]
    real = len(prompt) + len(target)
    assert b.input_ids[0, :real].tolist() == prompt + target and b.pad_mask[0, real:].all()
    assert b.labels[0, len(prompt) - 1 : real - 1].tolist() == target


def test_titled_rows_keep_header_and_cue_whole():
    """A titled document's row is build_prompt(..., title) + target; only the document is ever cut."""
    doc = SummaryDoc("0", "word " * 40, "The summary. " * 3, "Some Title")
    b = SummarySampler(TOK, [doc], 128, 16, 1, 0).next_batch()
    target = TOK.encode(doc.summary) + [TOK.eos_id]
    room = 128 - len(target) - len(TOK.encode("Title: Some Title\n\n\n\nTitle: Some Title\nAbstract:\n"))
    prompt = build_prompt(TOK, doc.document, room, title=doc.title)
    real = len(prompt) + len(target)
    assert real == 128 and b.input_ids[0].tolist() == prompt + target
    assert b.labels[0, len(prompt) - 1 : real - 1].tolist() == target
    with pytest.raises(ValueError, match="cannot hold document '0'.s title header and cue"):
        SummarySampler(TOK, [SummaryDoc("0", "w", "s", "T" * 200)], 128, 16, 1, 0).next_batch()
