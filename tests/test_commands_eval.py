"""`infini eval ppl|passkey`, `infini generate`, `infini plot gates|ppl` on a tiny model.

``load_pretrained`` is replaced by a stand-in that serves a tiny random model under the name
"tiny" and raises FileNotFoundError for anything else, so these tests do not depend on a trained
checkpoint; the real loader's missing-model error is checked separately when it is importable.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types

import pytest
import torch

from helpers import ByteTokenizer
from infini_attention import InfiniTransformer, ModelConfig, stream_generate
from infini_attention.cli import main
from infini_attention.commands.generate import IncrementalDecoder

pytestmark = pytest.mark.usefixtures("single_thread")

TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 12


def tiny_model(vocab_size: int = 257) -> InfiniTransformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=vocab_size, d_model=16, n_layers=2, n_heads=2, segment_len=32, tie_embeddings=False
    )
    m = InfiniTransformer(config)
    with torch.no_grad():  # unit-scale embeddings, small head: varied tokens, a spread-out distribution
        m.embed.weight.normal_()
        m.lm_head.weight.normal_(0.0, 0.1)
    return m


@pytest.fixture
def fake_models(monkeypatch):
    """``load_pretrained("tiny")`` -> (tiny model, byte tokenizer); ``models[name] = (m, tok)`` adds more."""
    models = {"tiny": (tiny_model(), ByteTokenizer())}

    def load_pretrained(path_or_name, *, device=None, dtype=None):
        if path_or_name not in models:
            raise FileNotFoundError(f"model not found: {path_or_name}")
        return models[path_or_name]

    fake = types.ModuleType("infini_attention.pretrained")
    fake.load_pretrained = load_pretrained
    monkeypatch.setitem(sys.modules, "infini_attention.pretrained", fake)
    return models


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def one_line_error(capsys, argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("infini: error:") and match in lines[0], lines[0]


def test_eval_ppl_text_prints_table_and_writes_json(fake_models, text_file, tmp_path, capsys):
    out = tmp_path / "ppl.json"
    assert main(["eval", "ppl", "--model", "tiny", "--text", str(text_file), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0-2K" in printed and "32K+" in printed and "overall" in printed and "ppl no memory" in printed
    results = json.loads(out.read_text())
    n = len(TEXT.encode())
    assert results["tokens"] == n - 1 and results["buckets"][0]["tokens"] == n - 1
    assert results["overall"]["ppl"] > 1 and results["overall"]["ppl_no_memory"] > 1
    assert results["docs"] == [{"name": "book.txt", "tokens": n}]

    # plot it from the JSON
    png = tmp_path / "ppl.png"
    assert main(["plot", "ppl", "--results", str(out), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eval_ppl_max_tokens(fake_models, text_file, tmp_path, capsys):
    out = tmp_path / "ppl.json"
    argv = ["eval", "ppl", "--model", "tiny", "--text", str(text_file), "--max-tokens", "100"]
    assert main([*argv, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["tokens"] == 99


def test_eval_ppl_split_eval_of_a_prepared_corpus(fake_models, tmp_path, monkeypatch, capsys):
    tok_mod = pytest.importorskip("infini_attention.data.tokenizer")
    pytest.importorskip("infini_attention.data.prepare")
    monkeypatch.setenv("INFINI_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    (corpus / "train").mkdir(parents=True)
    (corpus / "eval").mkdir()
    (corpus / "train" / "a.txt").write_text(TEXT)
    (corpus / "eval" / "emma.txt").write_text(TEXT[:500])
    (corpus / "eval" / "persuasion.txt").write_text(TEXT[500:900])
    tok = tok_mod.Tokenizer.train([TEXT], vocab_size=300)
    fake_models["bpe"] = (tiny_model(tok.vocab_size), tok)
    out = tmp_path / "ppl.json"
    argv = ["eval", "ppl", "--model", "bpe", "--split", "eval", "--data", str(corpus), "--json", str(out)]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    names = [d["name"] for d in results["docs"]]
    assert len(names) == 2 and any("emma" in n for n in names)
    # the model's tokenizer was used (plus an end-of-text token per document)
    assert results["docs"][0]["tokens"] in (
        len(tok.encode(TEXT[:500])) + 1,
        len(tok.encode(TEXT[500:900])) + 1,
    )


def test_eval_passkey_prints_table_and_writes_json(fake_models, tmp_path, capsys):
    out = tmp_path / "pk.json"
    argv = ["eval", "passkey", "--model", "tiny", "--lengths", "400,1K", "--positions", "start,end"]
    assert main([*argv, "--trials", "2", "--seed", "5", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["position", "400", "1K"]
    assert lines[2].startswith("start") and lines[3].startswith("end")
    assert "/2)" in lines[2]
    assert "1K end" in captured.err  # progress per cell
    results = json.loads(out.read_text())
    assert results["lengths"] == [400, 1024] and results["positions"] == ["start", "end"]
    assert len(results["cells"]) == 4 and all(len(c["samples"]) == 2 for c in results["cells"])


def test_eval_passkey_options_and_heatmap(fake_models, tmp_path, capsys):
    """--bf16, --memory-off, --no-shared-prefix are recorded and run; --plot and `plot passkey` draw."""
    out, png = tmp_path / "pk.json", tmp_path / "pk.png"
    argv = [
        "eval",
        "passkey",
        "--model",
        "tiny",
        "--lengths",
        "400",
        "--positions",
        "middle",
        "--trials",
        "2",
    ]
    assert main([*argv, "--json", str(out)]) == 0
    plain = json.loads(out.read_text())
    assert main([*argv, "--no-shared-prefix", "--json", str(out)]) == 0
    full = json.loads(out.read_text())
    outputs = [[s["output"] for s in r["cells"][0]["samples"]] for r in (plain, full)]
    assert outputs[0] == outputs[1]  # the shared prefix changes the cost, not the answers
    assert full["cells"][0]["streamed_tokens"] > plain["cells"][0]["streamed_tokens"]
    assert main([*argv, "--bf16", "--memory-off", "--json", str(out), "--plot", str(png)]) == 0
    r = json.loads(out.read_text())
    assert r["bf16"] is True and r["memory_off"] is True and r["model"] == "tiny"
    assert png.stat().st_size > 1000
    model = fake_models["tiny"][0]
    assert all(torch.equal(g, torch.zeros_like(g)) for g in model.gates())  # gates restored after
    png.unlink()
    assert main(["plot", "passkey", "--results", str(out), "--out", str(png)]) == 0
    assert png.stat().st_size > 1000 and "heatmap written" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text('{"overall": 1}')
    one_line_error(
        capsys, ["plot", "passkey", "--results", str(bad), "--out", str(png)], "not passkey results"
    )


def test_eval_passkey_haystacks(fake_models, tmp_path, capsys):
    """--haystack runs each harder variant and records it; the choices are the library's list."""
    from infini_attention.eval.haystacks import HAYSTACKS

    out = tmp_path / "pk.json"
    argv = [
        "eval",
        "passkey",
        "--model",
        "tiny",
        "--lengths",
        "700",
        "--positions",
        "middle",
        "--trials",
        "2",
    ]
    for haystack in ("two-keys", "rephrased"):
        assert main([*argv, "--haystack", haystack, "--json", str(out)]) == 0
        assert f"haystack: {haystack}" in capsys.readouterr().out
        r = json.loads(out.read_text())
        assert r["haystack"] == haystack and ("answered_distractor" in r["cells"][0]) == (
            haystack == "two-keys"
        )
    with pytest.raises(SystemExit) as exit_info:  # argparse's own one-line usage error
        main([*argv, "--haystack", "needles"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "invalid choice: 'needles'" in err[0]
    for haystack in HAYSTACKS:  # every variant the library has, the CLI offers (argparse accepts it)
        one_line_error(capsys, [*argv, "--haystack", haystack, "--trials", "0"], "--trials")


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--lengths", "0"], "positive"),
        (["--lengths", "-3"], "positive"),
        (["--lengths", "abc"], "positive"),
        (["--lengths", "32768,x"], "positive"),
        (["--lengths", "20"], "too short"),
        (["--positions", "start,top"], "unknown position 'top'"),
        (["--trials", "0"], "--trials"),
    ],
)
def test_eval_passkey_bad_values(fake_models, capsys, extra, match):
    one_line_error(capsys, ["eval", "passkey", "--model", "tiny", "--lengths", "500", *extra], match)


def test_missing_model_and_missing_files(fake_models, text_file, tmp_path, capsys):
    one_line_error(capsys, ["eval", "ppl", "--model", "nope", "--text", str(text_file)], "model not found")
    one_line_error(capsys, ["eval", "ppl", "--model", "tiny", "--text", str(tmp_path / "x.txt")], "not found")
    one_line_error(
        capsys,
        ["eval", "ppl", "--model", "tiny", "--text", str(text_file), "--max-tokens", "1"],
        "--max-tokens",
    )
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9")
    one_line_error(capsys, ["eval", "ppl", "--model", "tiny", "--text", str(bad)], "not UTF-8")
    one_line_error(capsys, ["eval", "passkey", "--model", "nope", "--lengths", "500"], "model not found")
    one_line_error(capsys, ["generate", "--model", "nope", "--prompt", "hi"], "model not found")
    one_line_error(
        capsys, ["generate", "--model", "tiny", "--prompt-file", str(tmp_path / "p.txt")], "not found"
    )
    one_line_error(
        capsys, ["plot", "gates", "--model", "nope", "--out", str(tmp_path / "g.png")], "not found"
    )
    one_line_error(capsys, ["plot", "ppl", "--results", str(tmp_path / "r.json")], "not found")
    not_json = tmp_path / "r.json"
    not_json.write_text("{")
    one_line_error(capsys, ["plot", "ppl", "--results", str(not_json)], "not a JSON")
    not_json.write_text('{"cells": []}')
    one_line_error(capsys, ["plot", "ppl", "--results", str(not_json)], "not perplexity results")
    one_line_error(capsys, ["plot", "ppl", "--model", "tiny"], "--text")
    one_line_error(
        capsys,
        ["plot", "gates", "--model", "tiny", "--out", str(tmp_path / "no" / "g.png")],
        "does not exist",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "ppl", "--model", "tiny"],  # neither --text nor --split
        ["eval", "ppl", "--model", "tiny", "--text", "a", "--split", "eval"],
        ["eval", "passkey", "--model", "tiny", "--trials", "two"],
        ["generate", "--model", "tiny"],
        ["eval"],
    ],
)
def test_usage_errors_exit_2(fake_models, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_generate_streams_the_greedy_continuation(fake_models, capsys):
    model, tok = fake_models["tiny"]
    prompt = "Once upon a time"
    assert (
        main(
            [
                "generate",
                "--model",
                "tiny",
                "--prompt",
                prompt,
                "--max-new-tokens",
                "24",
                "--temperature",
                "0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    ref = []
    for t in stream_generate(model, torch.tensor(tok.encode(prompt)), 24, eos_id=tok.eos_id):
        if t == tok.eos_id:
            break
        ref.append(t)
    assert out == tok.decode(ref) + "\n"


def test_generate_from_file_with_sampling_is_seeded(fake_models, tmp_path, capsys):
    p = tmp_path / "prompt.txt"
    p.write_text("Ça commence ici: ", encoding="utf-8")
    argv = [
        "generate",
        "--model",
        "tiny",
        "--prompt-file",
        str(p),
        "--max-new-tokens",
        "30",
        "--top-p",
        "0.9",
    ]
    outs = []
    for seed in ("1", "1", "2"):
        assert main([*argv, "--seed", seed]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0] != outs[2]
    for bad, match in ((["--max-new-tokens", "0"], "--max-new-tokens"), (["--top-p", "0"], "--top-p")):
        one_line_error(capsys, [*argv, *bad], match)


def test_incremental_decoder_never_splits_a_character():
    tok = ByteTokenizer()
    text = "aé€😀b c"
    dec = IncrementalDecoder(tok, tok.encode("prompt "))
    pieces = [dec.push(t) for t in tok.encode(text)]
    assert "".join(pieces) + dec.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[:3] == ["a", "", "é"]  # é is 2 bytes: held back until complete
    # an unfinished character at the very end comes out as a replacement character on flush
    dec = IncrementalDecoder(tok)
    assert [dec.push(t) for t in "€".encode()[:2]] == ["", ""]
    assert dec.flush() == "\ufffd"


def test_plot_gates_and_plot_ppl_from_a_model(fake_models, text_file, tmp_path, capsys):
    png = tmp_path / "gates.png"
    assert main(["plot", "gates", "--model", "tiny", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "4 heads" in capsys.readouterr().out
    png2 = tmp_path / "ppl.png"
    argv = [
        "plot",
        "ppl",
        "--model",
        "tiny",
        "--text",
        str(text_file),
        "--max-tokens",
        "300",
        "--out",
        str(png2),
    ]
    assert main(argv) == 0
    assert png2.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(
    importlib.util.find_spec("infini_attention.pretrained") is None, reason="load_pretrained not built yet"
)
def test_real_loader_missing_model_is_one_line(tmp_path, text_file):
    result = subprocess.run(
        [sys.executable, "-m", "infini_attention.cli", "eval", "ppl", "--model", str(tmp_path / "none")]
        + ["--text", str(text_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infini: error:"), result.stderr


def _cell(length, position, correct, trials=2):
    samples = [{"key": "12345", "correct": i < correct} for i in range(trials)]
    return {"length": length, "position": position, "trials": trials, "correct": correct,
            "accuracy": correct / trials, "prompt_tokens": length * trials, "seconds": 1.0,
            "samples": samples}  # fmt: skip


def _results(cells, **extra):
    positions = list(dict.fromkeys(c["position"] for c in cells))
    return {"lengths": sorted({c["length"] for c in cells}), "positions": positions,
            "haystack": "repeated", "segment_len": 128, "bf16": False, "memory_off": False, "trials": 2,
            "seed": 0, "cells": cells, "model": "passkey", **extra}  # fmt: skip


def test_plot_passkey_joins_separate_runs(tmp_path, capsys):
    """Two runs (32K at start/end, 1M at start) become one table and heatmap; a cell run twice, or
    runs that differ in what they measured, are one-line errors, not a silently wrong table."""
    a, b, joined, png = (tmp_path / n for n in ("a.json", "b.json", "joined.json", "pk.png"))
    a.write_text(json.dumps(_results([_cell(32768, "start", 2), _cell(32768, "end", 1)])))
    b.write_text(json.dumps(_results([_cell(1048576, "start", 0)], model="runs/x")))
    argv = ["plot", "passkey", "--results", str(b), str(a), "--out", str(png)]
    assert main([*argv, "--json", str(joined)]) == 0
    out = capsys.readouterr().out
    assert "100% (2/2)" in out and "0% (0/2)" in out and "joined results to" in out
    r = json.loads(joined.read_text())
    assert r["lengths"] == [32768, 1048576] and r["positions"] == ["start", "end"]
    assert [(c["length"], c["position"]) for c in r["cells"]] == [
        (32768, "start"),
        (32768, "end"),
        (1048576, "start"),
    ]
    assert r["model"] == "runs/x + passkey" and r["joined_from"] == [str(b), str(a)] and r["trials"] == 2
    assert png.stat().st_size > 1000
    one_line_error(capsys, ["plot", "passkey", "--results", str(a), str(a), "--out", str(png)],
                   "cell 32K start is in both")  # fmt: skip
    b.write_text(json.dumps(_results([_cell(1048576, "start", 0)], bf16=True)))
    one_line_error(capsys, argv, "cannot join passkey results with different bf16")
