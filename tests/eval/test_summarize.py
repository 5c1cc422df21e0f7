"""`infini eval summarize`: ROUGE and the overall score against hand counts, sentence splitting, prompt
truncation, the lead baseline, and the CLI end to end on a tiny random model saved with save_pretrained."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from helpers import ByteTokenizer
from infini_attention import InfiniTransformer, ModelConfig, save_pretrained
from infini_attention.cli import main
from infini_attention.data.summaries import SummaryDoc
from infini_attention.data.tokenizer import Tokenizer
from infini_attention.eval import summarize as sm

pytest.importorskip("rouge_score", reason="needs rouge-score (the pipeline extra)")
pytestmark = pytest.mark.usefixtures("single_thread")


# ---- ROUGE and the overall score -----------------------------------------------------------------


def test_rouge_by_hand():
    # unigrams: the x2, cat, on, mat shared (5 of 6 each side); "sat" vs "lay" differ
    # bigrams: the-cat, on-the, the-mat shared of 5 each side (cat-sat, sat-on vs cat-lay, lay-on)
    # LCS: "the cat on the mat" = 5 of 6
    s = sm.rouge_scores("the cat sat on the mat", "the cat lay on the mat")
    assert s == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6, "rougeLsum": 5 / 6})


def test_rouge_lsum_uses_sentences():
    # reference sentences [a b c] [d e]; prediction [a b] [e d c].
    # rougeL on the flat sequences: LCS(a b e d c, a b c d e) = 3 ("a b c") -> P = R = 3/5.
    # rougeLsum: union LCS of [a b c] with each prediction sentence = {a, b} + {c} = 3 hits,
    # of [d e] = 1 hit ("d" or "e"); 4 hits of 5 reference and 5 predicted tokens -> 4/5.
    s = sm.rouge_scores("A b. E d c.", "A b c. D e.")
    assert s["rougeL"] == pytest.approx(3 / 5) and s["rougeLsum"] == pytest.approx(4 / 5)


def test_overall_is_the_geometric_mean_of_the_aggregate():
    # the paper's Table 4 row (Linear+Delta): (40.0 * 8.8 * 17.9) ** (1/3) = 18.47 -> printed 18.5
    assert sm.overall_score(40.0, 8.8, 17.9) == pytest.approx(18.47, abs=0.005)
    pairs = {"the cat sat on the mat": "the cat lay on the mat", "mat": "the mat"}
    docs = [SummaryDoc(str(i), pred, ref) for i, (pred, ref) in enumerate(pairs.items())]
    results = sm.evaluate_summaries(docs, lambda doc: (doc.document, 7, False))
    # doc 2: R-1 P = 1/1, R = 1/2 -> F = 2/3; no bigram in "mat" -> R-2 = 0; R-L = 2/3
    r1, r2, rl = (5 / 6 + 2 / 3) / 2, (3 / 5 + 0) / 2, (5 / 6 + 2 / 3) / 2
    agg = results["aggregate"]
    assert agg["rouge1"] == pytest.approx(r1) and agg["rouge2"] == pytest.approx(r2)
    assert agg["rougeL"] == pytest.approx(rl) and agg["documents"] == 2
    # 0.5525, not the mean of per-document geometric means (0.373: document 2's is 0)
    assert agg["overall"] == pytest.approx((r1 * r2 * rl) ** (1 / 3)) and agg["overall"] > 0.55
    record = results["documents"][1]
    assert record["prediction"] == "mat" and record["reference"] == "the mat"
    assert record["input_tokens"] == 7 and record["truncated"] is False and record["seconds"] >= 0


def test_control_scores_each_summary_against_the_next_documents_reference():
    docs = [
        SummaryDoc("a", "the cat sat on the mat", "the cat lay on the mat"),
        SummaryDoc("b", "dog", "a dog"),
    ]
    results = sm.evaluate_summaries(docs, lambda doc: (doc.document, None, False))
    control = results["control"]
    # "the cat sat on the mat" vs "a dog": nothing shared; "dog" vs "the cat lay on the mat": nothing
    assert control["rouge1"] == 0 and control["overall"] == 0 and control["documents"] == 2
    swapped = sm.control_aggregate(list(reversed(results["documents"])))
    assert swapped == control  # two documents: each is the other's next
    assert sm.control_aggregate(results["documents"][:1]) is None
    table = sm.format_summary_table(results)
    assert table.splitlines()[2].split()[:2] == ["control", "0.00"]


# ---- sentences, prompts, the lead baseline -------------------------------------------------------


def test_split_sentences():
    text = (
        'We follow Smith et al. (2007) closely. See Fig. 3 and J. Smith\'s note! Is it "good?" Yes.\n'
        "this line was wrapped. (A bracket) opens one.\n\nA new paragraph without a stop\n \nlast"
    )
    assert sm.split_sentences(text) == [
        "We follow Smith et al. (2007) closely.",
        "See Fig. 3 and J. Smith's note!",
        'Is it "good?"',
        "Yes. this line was wrapped.",
        "(A bracket) opens one.",
        "A new paragraph without a stop",
        "last",
    ]
    assert sm.split_sentences("  ") == [] and sm.split_sentences("version 2.0 is out.") == [
        "version 2.0 is out."
    ]


def test_build_prompt_keeps_the_beginning():
    tok = ByteTokenizer()
    suffix = list(sm.PROMPT_SUFFIX.encode())
    assert sm.build_prompt(tok, "abcdef", 3) == [97, 98, 99] + suffix
    assert sm.build_prompt(tok, "abcdef", None) == list(b"abcdef") + suffix
    assert sm.prompt_ids(tok, "abcdef", 3) == ([97, 98, 99] + suffix, 6, True)
    assert sm.prompt_ids(tok, "abcdef", 6) == (list(b"abcdef") + suffix, 6, False)


def test_titled_prompt_frames_the_document_and_names_it_in_the_cue():
    tok = ByteTokenizer()
    head, cue = list(b"Title: T\n\n"), list(b"\n\nTitle: T\nAbstract:\n")
    assert sm.build_prompt(tok, "abcdef", 2, title="T") == head + [97, 98] + cue  # K counts the document
    assert sm.prompt_ids(tok, "abcdef", None, "T") == (head + list(b"abcdef") + cue, 6, False)
    assert sm.prompt_frame("") == ("", sm.PROMPT_SUFFIX) and cue[-len(b"Abstract:\n") :] == list(
        b"Abstract:\n"
    )


def _papers(n: int) -> list[SummaryDoc]:
    return [SummaryDoc(f"p{i}", f"{chr(97 + i)}" * (20 + 7 * i), "s", f"P{i}") for i in range(n)]


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_haystack_places_the_whole_target_and_has_the_exact_length(depth):
    tok = ByteTokenizer()
    target = SummaryDoc("t", "TARGET BODY " * 5, "ref", "Mine")
    others = [target, *_papers(6)]  # the target itself is never a distractor
    hay = sm.haystack_prompt(tok, target, others, 1000, depth, seed=3)
    block = sm.build_prompt(tok, target.document, title="Mine")
    cue = list(b"\n\nTitle: Mine\nAbstract:\n")
    assert len(hay.ids) == 1000 and hay.ids[-len(cue) :] == cue
    assert hay.ids[hay.target_start : hay.target_start + hay.target_tokens] == block[: -len(cue)]
    assert bytes(hay.ids).count(b"TARGET") == 5 and bytes(hay.ids).count(b"Title: Mine") == 2
    filler = 1000 - hay.target_tokens - len(cue)
    if depth == 0.0:
        assert hay.target_start == 0
    elif depth == 1.0:
        assert hay.target_start + hay.target_tokens == 1000 - len(cue)
    else:  # a paper boundary near depth * filler: no paper here is longer than 69 tokens + separator
        assert abs(hay.target_start - depth * filler) <= 72
        assert bytes(hay.ids[hay.target_start - 2 : hay.target_start]) == b"\n\n"
    assert hay.distractors > 6 and not hay.truncated  # 6 short papers repeat to fill 1000 tokens
    again = sm.haystack_prompt(tok, target, others, 1000, depth, seed=3)
    other = sm.haystack_prompt(tok, target, others, 1000, depth, seed=4)
    assert again == hay and other.ids != hay.ids  # the order is drawn from (seed, target id)


def test_haystack_errors_and_truncation():
    tok = ByteTokenizer()
    target = SummaryDoc("t", "x" * 50, "ref", "T")
    with pytest.raises(ValueError, match="cannot hold document 't'"):
        sm.haystack_prompt(tok, target, _papers(2), 80, 0.5)
    with pytest.raises(ValueError, match="no other documents"):
        sm.haystack_prompt(tok, target, [target], 500, 0.5)
    with pytest.raises(ValueError, match=r"depth must be in \[0, 1\]"):
        sm.haystack_prompt(tok, target, _papers(2), 500, 1.5)
    cut = sm.haystack_prompt(tok, target, _papers(2), 500, 0.5, max_input_tokens=10)
    assert cut.truncated and cut.target_tokens == len(b"Title: T\n\n") + 10 and len(cut.ids) == 500


def test_lead_baseline():
    assert sm.lead_words(["one two three", "a b c d e", "x"]) == 3
    assert sm.lead_words(["a b", "a b c d e"]) == 4  # median 3.5 rounds to 4 (half to even)
    doc = "One two three. Four five. Six seven eight.\n\nNine."
    assert sm.lead_summary(doc, 1) == "One two three."
    assert sm.lead_summary(doc, 3) == "One two three."
    assert sm.lead_summary(doc, 4) == "One two three.\nFour five."  # the fewest sentences reaching 4
    assert sm.lead_summary(doc, 100) == "One two three.\nFour five.\nSix seven eight.\nNine."


def test_generate_summary_stops_at_eos(monkeypatch):
    seen = {}

    def fake_stream(model, ids, max_new_tokens, temperature, top_p, eos_id=None, generator=None):
        seen.update(ids=ids.tolist(), max_new_tokens=max_new_tokens, eos_id=eos_id, temperature=temperature)
        yield from [ord("H"), ord("i"), 256, ord("!")]

    monkeypatch.setattr("infini_attention.generation.stream_generate", fake_stream)
    text = sm.generate_summary(None, ByteTokenizer(), [1, 2], max_new_tokens=9, temperature=0.0)
    assert text == "Hi"
    assert seen == {"ids": [1, 2], "max_new_tokens": 9, "eos_id": 256, "temperature": 0.0}


# ---- the CLI end to end --------------------------------------------------------------------------

DOCS = [
    {
        "id": "short",
        "document": "The memory keeps old tokens. Nothing is lost.",
        "summary": "Memory keeps tokens.",
    },
    {"document": "Segments stream through the model. " * 6, "summary": "Segments stream."},
    {"id": "third", "document": "Gates mix local and memory attention. It works.", "summary": "Gates mix."},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved random 2-layer model (segments of 16 tokens) with a small BPE tokenizer, and a jsonl."""
    folder = tmp_path_factory.mktemp("summarize")
    tokenizer = Tokenizer.train([d["document"] + " " + d["summary"] for d in DOCS] * 5, vocab_size=300)
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        n_layers=2,
        n_heads=2,
        segment_len=16,
        tie_embeddings=False,
    )
    model = InfiniTransformer(config)
    with torch.no_grad():  # unit-scale embeddings, small head: a spread-out next-token distribution
        model.embed.weight.normal_()
        model.lm_head.weight.normal_(0.0, 0.1)
    save_pretrained(model, tokenizer, folder / "model")
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    return {"model": str(folder / "model"), "data": str(data), "tokenizer": tokenizer}


def run_cli(tiny, tmp_path, name, *extra) -> dict:
    out = tmp_path / f"{name}.json"
    argv = ["eval", "summarize", "--model", tiny["model"], "--data", tiny["data"], "--max-new-tokens", "6"]
    assert main([*argv, "--json", str(out), *extra]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_cli_json_structure_and_greedy_is_deterministic(tiny, tmp_path, capsys):
    first = run_cli(tiny, tmp_path, "a", "--greedy", "--max-input-tokens", "32")
    printed = capsys.readouterr()
    assert "R-Lsum" in printed.out and "overall" in printed.out and "[3/3] third" in printed.err
    again = run_cli(tiny, tmp_path, "b", "--greedy", "--max-input-tokens", "32")
    assert [d["prediction"] for d in first["documents"]] == [d["prediction"] for d in again["documents"]]

    meta = first["meta"]
    assert meta["model"] == tiny["model"] and meta["data"] == tiny["data"] and meta["split"] is None
    assert meta["decoding"] == {"temperature": 0.0, "top_p": 1.0, "greedy": True, "max_new_tokens": 6}
    assert meta["max_input_tokens"] == 32 and meta["memory_off"] is False and meta["seed"] == 0
    assert meta["command"].startswith("infini eval summarize --model ") and "--greedy" in meta["command"]
    assert meta["torch"] == torch.__version__ and meta["date"].endswith("+00:00")

    docs = first["documents"]
    assert [d["id"] for d in docs] == ["short", "2", "third"]
    keys = {"id", "input_tokens", "truncated", "prediction", "reference", "seconds", *sm.ROUGE_TYPES}
    assert all(set(d) == keys for d in docs)
    suffix = len(tiny["tokenizer"].encode(sm.PROMPT_SUFFIX))
    for d, src in zip(docs, DOCS, strict=True):
        n = len(tiny["tokenizer"].encode(src["document"]))
        assert d["truncated"] == (n > 32) and d["input_tokens"] == min(n, 32) + suffix
        assert d["reference"] == src["summary"]
        assert isinstance(d["prediction"], str)
    assert [d["truncated"] for d in docs] == [False, True, False]  # 29, 37, 31 document tokens

    agg = first["aggregate"]
    assert agg["documents"] == 3 and set(agg) == {*sm.ROUGE_TYPES, "overall", "documents"}
    for name in sm.ROUGE_TYPES:
        assert agg[name] == pytest.approx(sum(d[name] for d in docs) / 3)
    assert agg["overall"] == pytest.approx((agg["rouge1"] * agg["rouge2"] * agg["rougeL"]) ** (1 / 3))


def test_cli_sampling_defaults_are_the_papers_and_seeded(tiny, tmp_path):
    a = run_cli(tiny, tmp_path, "a", "--limit", "2")
    b = run_cli(tiny, tmp_path, "b", "--limit", "2")
    c = run_cli(tiny, tmp_path, "c", "--limit", "2", "--seed", "1")
    assert a["meta"]["decoding"] == {"temperature": 0.5, "top_p": 0.95, "greedy": False, "max_new_tokens": 6}
    assert a["meta"]["limit"] == 2 and a["aggregate"]["documents"] == 2
    preds = [[d["prediction"] for d in r["documents"]] for r in (a, b, c)]
    assert preds[0] == preds[1] and preds[0] != preds[2]


def test_cli_memory_off_and_lead_baseline(tiny, tmp_path, monkeypatch):
    from infini_attention.models import transformer

    closed = []

    @contextlib.contextmanager
    def spy(model):  # the real context manager, recording the gates it closed
        with real(model):
            closed.append([g.detach().max().item() for g in model.gates()])
            yield model

    real = transformer.memory_disabled
    monkeypatch.setattr(transformer, "memory_disabled", spy)
    off = run_cli(tiny, tmp_path, "off", "--greedy", "--memory-off")
    assert off["meta"]["memory_off"] is True and off["aggregate"]["documents"] == 3
    assert len(closed) == 1 and max(closed[0]) == -1e4
    run_cli(tiny, tmp_path, "on", "--greedy")
    assert len(closed) == 1  # not without --memory-off
    out = tmp_path / "lead.json"
    assert main(["eval", "summarize", "--data", tiny["data"], "--baseline", "lead", "--json", str(out)]) == 0
    lead = json.loads(out.read_text(encoding="utf-8"))
    assert (
        lead["meta"]["baseline"] == "lead"
        and lead["meta"]["model"] is None
        and lead["meta"]["decoding"] is None
    )
    assert lead["meta"]["lead_words"] == 2  # median of 3, 2, 2 summary words
    assert [d["prediction"] for d in lead["documents"]] == [
        "The memory keeps old tokens.",
        "Segments stream through the model.",
        "Gates mix local and memory attention.",
    ]
    assert lead["documents"][0]["input_tokens"] is None
    assert lead["documents"][2]["rouge1"] == pytest.approx(
        2 * (2 / 6) * 1 / (2 / 6 + 1)
    )  # 2 of 6 words, 2 of 2


def test_cli_haystack_embeds_each_document_among_the_others(tiny, tmp_path):
    # a .jsonl's haystack is its other records; the whole prompt is --haystack-tokens long
    r = run_cli(tiny, tmp_path, "hay", "--greedy", "--haystack-tokens", "160", "--haystack-depth", "0")
    assert r["meta"]["haystack"] == {"tokens": 160, "depth": 0.0, "pool": 3}
    for d in r["documents"]:
        assert d["input_tokens"] == 160 and d["target_start"] == 0 and d["target_tokens"] > 20
    last = run_cli(tiny, tmp_path, "last", "--greedy", "--haystack-tokens", "160", "--haystack-depth", "1")
    suffix = len(tiny["tokenizer"].encode(sm.PROMPT_SUFFIX))
    for d in last["documents"]:  # untitled documents: the plain cue right after the document
        assert d["target_start"] + d["target_tokens"] == 160 - suffix


@pytest.mark.parametrize(
    "extra, match",
    [
        ([], "--model is required (or --baseline lead)"),
        (["--model", "M", "--haystack-depth", "0.5"], "--haystack-depth applies with --haystack-tokens"),
        (["--model", "M", "--haystack-tokens", "1K", "--haystack-depth", "2"], "--haystack-depth must be in"),
        (["--model", "M", "--haystack-tokens", "lots"], "lengths must be positive ints"),
        (["--baseline", "lead", "--haystack-tokens", "1K"], "--haystack-tokens applies to model summaries"),
        (["--model", "M", "--greedy", "--temperature", "0.7"], "--greedy cannot be combined"),
        (["--model", "M", "--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
        (["--model", "M", "--temperature", "-1"], "--temperature must be >= 0"),
        (["--model", "M", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--model", "M", "--limit", "0"], "--limit must be at least 1"),
        (
            ["--model", "M", "--baseline", "lead"],
            "--model applies to model summaries, not to --baseline lead",
        ),
        (["--baseline", "lead", "--memory-off"], "--memory-off applies to model summaries"),
        (["--model", "M", "--split", "val"], "--split applies to aclsum"),
        (["--model", "M", "--document-field", "text"], "no text field 'text'"),
        (["--model", "M", "--json", "/nonexistent/dir/out.json"], "folder for /nonexistent/dir/out.json"),
        (["--model", "no-such-model"], "no-such-model"),
    ],
)
def test_cli_bad_args_are_one_line_exit_2(tiny, capsys, extra, match):
    # "M" is no model: each error must be found before the model is loaded
    assert main(["eval", "summarize", "--data", tiny["data"], *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], lines


def test_cli_unparsable_value_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors exit from the parser
        main(["eval", "summarize", "--model", "M", "--data", "d.jsonl", "--temperature", "hot"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "invalid float value: 'hot'" in lines[0], lines


@pytest.mark.parametrize(
    "data, match",
    [
        ("docs.txt", "--data must be 'aclsum' or a .jsonl file, got 'docs.txt'"),
        ("missing.jsonl", "data file not found"),
    ],
)
def test_cli_bad_data_is_one_line_exit_2(capsys, data, match):
    assert main(["eval", "summarize", "--model", "M", "--data", data]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], lines
