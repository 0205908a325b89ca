"""Command line: one subcommand per stage, in pipeline order. Bad input ends in one clear line.

Each ``cmd_*`` checks what it can before any model loads (options, the output folder, prompt files), then
parses its options into the stage's typed config and calls the stage; names such as ``organism:base``
are resolved here (``interp.organism.resolve_model_name``), never by model loading.

Exit codes: 0 done; 2 an expected failure (bad input, a model or file that cannot be read, an output
that would replace something interp did not write, a file-system error), as one line
``interp <command>: error: ...``; 130 interrupted (Ctrl-C), as one line, with nothing half written kept.
An unexpected error (a bug) shows its traceback; ``--debug`` shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import distributed
from ..config_file import COMMANDS
from ..errors import ConfigError, InterpError
from . import analyze, evaluate, plan, restore, study

# ----------------------------------------------------------------------------- the parser


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (``interp <command>: error: ...``, exit 2), like the rest, and
    no abbreviated options (``--conf`` would be ``--config`` to argparse but not to the file reader)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="interp", description="Where did safety go after fine-tuning, and how to put it back.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    stages = (
        study.organism_parser,
        analyze.capture_parser,
        analyze.analyze_parser,
        restore.restore_parser,
        evaluate.evaluate_parser,
        study.run_parser,
    )
    for add in (*stages, evaluate.judge_parser, study.protocol_parser, plan.plan_parser):
        add(sub)
    for command in sub.choices.values():  # every on/off flag can be undone (a --config file's true)
        for action in list(command._actions):
            flag = next((o for o in action.option_strings if o.startswith("--")), None)
            if isinstance(action, argparse._StoreTrueAction) and flag:
                undo = f"--{flag[5:]}" if flag.startswith("--no-") else f"--no-{flag[2:]}"
                if undo not in command._option_string_actions:
                    command.add_argument(undo, dest=action.dest, action="store_false", help=f"undo {flag}")
    for name, command in sub.choices.items():
        command.add_argument(
            "--config",
            default=None,
            help=f"a TOML file of {name}'s options (flags override it); the config.toml a run writes reruns it",
        )
    parser.set_defaults(commands=sub.choices)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, over the ``--config`` file's options where one is given (read and checked first:
    an option the file gives, ``--out`` included, is no longer required on the command line)."""
    from ..config_file import read

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = parser._defaults["commands"]
    command = next((word for word in argv if word in commands), None)
    config = _option_value(argv, "--config")
    expected: dict[str, str] = {}
    if command is not None and config is not None:
        found = read(config, commands[command], command)
        commands[command].set_defaults(**found.options)
        for action in commands[command]._actions:
            if action.dest in found.options:
                action.required = False
        expected = found.fingerprints
    args = parser.parse_args(argv)
    args.expected_fingerprints = expected
    return args


def _option_value(argv: list[str], option: str) -> str | None:
    """The value given to ``option`` (``--option VALUE`` or ``--option=VALUE``), the last one if repeated."""
    value = None
    for i, word in enumerate(argv):
        if word == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif word.startswith(option + "="):
            value = word[len(option) + 1 :]
    return value


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(argv)
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
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    raise SystemExit(code)
