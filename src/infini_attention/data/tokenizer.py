"""Byte-level BPE tokenizer: a thin wrapper over a Hugging Face ``tokenizers.Tokenizer``.

``Tokenizer.train`` builds a byte-level BPE (every UTF-8 string round-trips exactly) with one special
token, ``<|endoftext|>``, appended after every document. ``Tokenizer.from_file`` takes any Hugging
Face ``tokenizer.json`` (e.g. SmolLM2's) and picks its end-of-text token as ``eos_id``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
# End-of-text specials of common tokenizers, in order of preference (after EOS itself).
_EOS_CANDIDATES = (EOS, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "<|im_end|>")
# 256 byte symbols + the special token: the smallest byte-level vocabulary.
MIN_VOCAB = 257


class Tokenizer:
    """Text <-> token ids. ``vocab_size`` counts added tokens; ``eos_id`` is None if there is none."""

    def __init__(self, tk: tokenizers.Tokenizer):
        self._tk = tk
        self.vocab_size: int = tk.get_vocab_size(with_added_tokens=True)
        self.eos_id: int | None = _find_eos(tk)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
        """Train a byte-level BPE with ``vocab_size`` entries (including ``<|endoftext|>``)."""
        if vocab_size < MIN_VOCAB:
            raise ValueError(
                f"vocab_size must be at least {MIN_VOCAB} for a byte-level BPE, got {vocab_size}"
            )
        tk = tokenizers.Tokenizer(models.BPE())
        # No prefix space and no normaliser: decode(encode(s)) == s for every string.
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            # all 256 byte symbols, even those absent from the training text
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tk.train_from_iterator(texts, trainer=trainer)
        return cls(tk)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a Hugging Face ``tokenizer.json`` (or a folder that holds one)."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            return cls(tokenizers.Tokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"not a valid tokenizer.json: {path} ({err})") from None

    @classmethod
    def from_str(cls, s: str) -> Tokenizer:
        return cls(tokenizers.Tokenizer.from_str(s))

    def to_str(self) -> str:
        return self._tk.to_str()

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` (the Hugging Face format) to ``path``, compact: without the
        indentation a pretty file has, an 8K-entry BPE takes 226 KB instead of 546 KB (it counts
        against the 5 MB a shipped checkpoint may take)."""
        self._tk.save(str(path), pretty=False)

    def encode(self, text: str) -> list[int]:
        # No special tokens are added here: callers append eos_id at document ends.
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` over many texts, in parallel threads."""
        return [e.ids for e in self._tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        # Special tokens are kept, so a text that contains "<|endoftext|>" also round-trips.
        return self._tk.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def _find_eos(tk: tokenizers.Tokenizer) -> int | None:
    """The id of ``<|endoftext|>`` or of the tokenizer's own end-of-text special token, else None."""
    specials = {t.content: i for i, t in tk.get_added_tokens_decoder().items() if t.special}
    for name in _EOS_CANDIDATES:
        if name in specials:
            return specials[name]
    # "<|endoftext|>" may also be an ordinary vocabulary entry (GPT-2's vocab.json)
    return tk.token_to_id(EOS)
