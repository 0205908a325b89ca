"""``python -m interp.cli``: the command line (as ``interp`` and ``python -m interp``)."""

from . import run

run()
