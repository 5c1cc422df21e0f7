"""``python -m infini_attention``: the ``infini`` command (what ``torchrun -m infini_attention`` runs)."""

import sys

from .cli import main

sys.exit(main())
