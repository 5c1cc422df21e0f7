"""Command-line entry point ``infini``. Thin: parses arguments and calls the library.

Errors are one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (exit 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="infini",
        description="Infini-attention: unbounded context at bounded memory (arXiv 2404.07143).",
    )
    parser.add_argument("--version", action="version", version=f"infini-attention {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    check = sub.add_parser(
        "check",
        help="verify the fast op against the reference on this machine",
        description="Compare the fast op with the literal reference (outputs, state, gradients) and "
        "check that a stream split at random points equals one call, on random inputs.",
    )
    check.add_argument("--device", default="cpu", help="torch device to check (default: cpu)")
    check.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "check":
            from .selfcheck import run_selfcheck

            return 0 if run_selfcheck(args.device, args.seed) else 1
    except (ValueError, OSError, RuntimeError) as err:
        print(f"infini: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("infini: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
