"""Command line: one subcommand per stage, in pipeline order. Bad input ends in one clear line.

Each ``cmd_*`` checks what it can before any model loads (options, the output folder, prompt files), then
parses its options into the stage's typed config and calls the stage; names such as ``organism:base``
are resolved here (``interp.organism.resolve_model_name``), never by model loading.

The commands live by stage, each module with its commands' options beside the ``cmd_*`` that reads them:
``study`` (organism, run, protocol), ``analyze`` (capture, analyze), ``restore``, ``evaluate`` (evaluate,
judge), ``plan`` and ``figures`` (a run folder's figures and tables, redrawn); ``common`` holds the
options several commands share, and ``parser`` assembles the ``interp`` parser. Here: ``main``, which
runs a command line, and ``run``, the ``interp`` command.

Exit codes: 0 done; 2 an expected failure (bad input, a model or file that cannot be read, an output
that would replace something interp did not write, a file-system error), as one line
``interp <command>: error: ...``; 130 interrupted (Ctrl-C), as one line, with nothing half written kept.
An unexpected error (a bug) shows its traceback; ``--debug`` shows the traceback of every error.
"""

from __future__ import annotations

import os
import sys

from .. import distributed
from ..config_file import COMMANDS
from ..errors import ConfigError, InterpError
from .parser import parse

__all__ = ["main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); its exit code is 0, 2 or 130 (see above)."""
    try:
        args = parse(argv)
    except KeyboardInterrupt:  # while the parser's modules load (torch, for the options' defaults)
        print("interp: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    except SystemExit as done:  # --help (0), or a bad option: the parser printed its one line (2)
        return done.code if isinstance(done.code, int) else 2
    except ConfigError as error:  # a bad --config file
        command = next((word for word in (argv or sys.argv[1:]) if word in COMMANDS), None)
        print(f"interp{f' {command}' if command else ''}: error: {error}", file=sys.stderr)
        return 2
    where = f"interp {args.command}"
    if not distributed.is_main():  # one of several processes: the main one speaks for all
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    try:
        if distributed.sharded():
            distributed.fsdp_settings()  # a launch interp cannot shard with fails here, before any work
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{where}: interrupted; nothing half written was kept", file=sys.stderr)
        return 130
    except (InterpError, OSError) as error:
        if args.debug:
            raise
        if isinstance(error, OSError) and not isinstance(error, InterpError):
            error = f"{error.strerror or error}: {error.filename}" if error.filename else error
        if distributed.is_main() or not isinstance(error, ConfigError):  # every process met the same setting
            print(f"{where}: error: {error}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """The ``interp`` command (and ``python -m interp``): ``main``'s exit code. After a Ctrl-C the process
    leaves at once with 130: CPython marks a process whose KeyboardInterrupt arrived while an extension
    ran Python code (torch does while it imports), and at a normal exit it would then kill itself with
    SIGINT, caught or not."""
    code = main()
    distributed.leave(code)  # launched: every process leaves here (interp.distributed, "Leaving")
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    raise SystemExit(code)
