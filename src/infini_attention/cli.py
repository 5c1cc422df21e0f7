"""Command-line entry point ``infini``. Thin: parses arguments and calls the library.

Each subcommand lives in ``infini_attention/commands/<name>.py`` with ``add_parser(subparsers)``
and ``run(args) -> int``; modules are imported lazily so ``infini --help`` stays fast.
Errors are one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__

# subcommand name -> module under infini_attention.commands
COMMANDS = ["check", "data", "train", "convert", "eval", "generate", "plot", "demo", "bench"]


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (exit 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit 2."""


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="infini",
        description="Infini-attention: unbounded context at bounded memory (arXiv 2404.07143).",
    )
    parser.add_argument("--version", action="version", version=f"infini-attention {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"infini_attention.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"infini_attention.commands.{name}":
                continue  # not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(f"infini_attention.commands.{args.command}")
    try:
        from . import malloc

        malloc.apply_from_env()  # freed buffers stay in the heap: no page faults per step (malloc.py)
        return int(module.run(args) or 0)
    except ModuleNotFoundError as err:
        print(
            f"infini: error: this command needs the '{err.name}' package: "
            "pip install 'infini-attention[pipeline]'",
            file=sys.stderr,
        )
        return 2
    except (UsageError, ValueError, OSError, RuntimeError, KeyError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        # under torchrun every process meets the same error: rank 0 alone says it (exit 2 everywhere)
        if os.environ.get("RANK", "0") == "0":
            print(f"infini: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("infini: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
