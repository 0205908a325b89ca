"""``python -m interp``: the command line."""

from .cli import main

raise SystemExit(main())
