"""``python -m interp``: the command line."""

from .cli import run

run()
