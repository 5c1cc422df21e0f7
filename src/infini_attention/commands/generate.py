"""``infini generate``: stream a continuation of a prompt, printed as the tokens come."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .eval import add_model_args, load_model


class IncrementalDecoder:
    """Turns a stream of token ids into text pieces that never split a character.

    Byte-level tokens can end halfway through a multi-byte UTF-8 character; such a piece decodes
    to a trailing U+FFFD, so it is held back until the next token completes it. Decoding a short
    window (``prefix`` ids already printed + the new ones) rather than single tokens also keeps
    tokenizers that treat leading spaces specially correct. ``context`` seeds the window with the
    prompt's last ids.
    """

    def __init__(self, tokenizer, context: list[int] | None = None):
        self.tokenizer = tokenizer
        self.ids: list[int] = list(context or [])[-5:]
        self.prefix = 0  # window start
        self.read = len(self.ids)  # ids up to here are printed

    def push(self, token: int) -> str:
        """Add a token; return the text it completes (possibly empty)."""
        self.ids.append(int(token))
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            piece = text[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
            return piece
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes to U+FFFD)."""
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(before) :]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="continue a prompt, streaming the text as it is generated",
        description="Stream the prompt through the model (any length, bounded memory) and print the "
        "continuation as tokens come.",
    )
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="the prompt text")
    src.add_argument("--prompt-file", metavar="FILE", help="a UTF-8 file holding the prompt")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default: 100)")
    p.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy (default: 0.8)"
    )
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return args.prompt
    path = Path(args.prompt_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {args.prompt_file}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{args.prompt_file} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    prompt = read_prompt(args)

    import torch

    from ..generation import stream_generate

    model, tokenizer = load_model(args)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: give at least one token of text")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(args.seed)
    eos = getattr(tokenizer, "eos_id", None)
    decoder = IncrementalDecoder(tokenizer, ids)
    out = sys.stdout
    for token in stream_generate(
        model,
        torch.tensor(ids, dtype=torch.long),
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        eos_id=eos,
        generator=generator,
    ):
        if token == eos:
            break
        piece = decoder.push(token)
        if piece:
            out.write(piece)
            out.flush()
    out.write(decoder.flush() + "\n")
    out.flush()
    return 0
