"""The paper's Table 2 at small scale: the same as ``infini bench table2`` (see its --help).

The logic lives in ``infini_attention.eval.table2``; this file only forwards its arguments::

    python benchmarks/table2.py --variants infini-delta,transformer-xl --eval-tokens 65536
"""

from __future__ import annotations

import sys

from infini_attention.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "table2", *sys.argv[1:]]))
