"""``python -m hafsvg``: the command line of :mod:`hafsvg.cli`."""

from .cli import main

raise SystemExit(main())
