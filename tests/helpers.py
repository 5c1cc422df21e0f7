"""Stand-ins shared by several test modules (importable as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations


class ByteTokenizer:
    """Stand-in tokenizer: UTF-8 bytes are the ids; 256 is the end-of-text token."""

    vocab_size, eos_id = 257, 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
