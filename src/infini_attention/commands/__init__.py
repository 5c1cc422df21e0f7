"""One module per ``infini`` subcommand: ``add_parser(subparsers)`` and ``run(args) -> int``.

Modules import heavy dependencies inside ``run`` so that ``infini --help`` stays fast and works
with only the core installed.
"""
