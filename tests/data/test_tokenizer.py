"""Byte-level BPE: exact round-trips, the end-of-text token, save/load in the Hugging Face format."""

from __future__ import annotations

import json

import pytest
import tokenizers

from infini_attention.data.tokenizer import EOS, Tokenizer

TEXTS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n",
    "In the beginning God created the heaven and the earth.\n" * 5,
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
]
ODD = [
    "",
    " ",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nwindows line ends\rand lone CRs",
    "accents: café naïve Æsir ſ ﬁ",
    "CJK 漢字かな한국어, emoji 👩‍👩‍👧 🇬🇧, math ∑∫√",
    "control \x00\x01\x7f and \u200b zero width",
    f"a literal {EOS} inside text",
    "x" * 5000,
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXTS * 3, vocab_size=300)


@pytest.mark.parametrize("text", TEXTS + ODD)
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_trained_vocabulary_and_eos(tok):
    assert tok.vocab_size == 300
    assert tok.eos_id is not None and tok.decode([tok.eos_id]) == EOS
    assert tok.encode(EOS) == [tok.eos_id]
    # merges were learned: common words take fewer tokens than bytes
    assert len(tok.encode("the question")) < len(b"the question")


def test_no_special_tokens_added_by_encode(tok):
    assert tok.eos_id not in tok.encode("hello world")


def test_save_from_file_and_str(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
    for other in (Tokenizer.from_file(path), Tokenizer.from_file(tmp_path), Tokenizer.from_str(tok.to_str())):
        assert (other.vocab_size, other.eos_id) == (tok.vocab_size, tok.eos_id)
        for text in TEXTS + ODD:
            assert other.encode(text) == tok.encode(text)


def _word_level(vocab: list[str], specials: list[str]) -> tokenizers.Tokenizer:
    tk = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]")
    )
    tk.add_special_tokens(specials)
    return tk


@pytest.mark.parametrize(
    ("specials", "eos"),
    [([], None), (["<s>", "</s>"], "</s>"), (["<|im_start|>", "<|endoftext|>"], "<|endoftext|>")],
)
def test_from_file_finds_the_end_of_text_token(tmp_path, specials, eos):
    """Any tokenizer.json works; eos_id is <|endoftext|>, else its own end-of-text special, else None."""
    path = tmp_path / "tokenizer.json"
    _word_level(["[UNK]", "hello", "world"], specials).save(str(path))
    tok = Tokenizer.from_file(path)
    assert tok.vocab_size == 3 + len(specials)
    assert tok.eos_id == (None if eos is None else tok.token_to_id(eos))


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Tokenizer.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Tokenizer.from_file(bad)
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(TEXTS, vocab_size=100)
