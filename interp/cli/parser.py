"""The ``interp`` parser, assembled from the command modules, and the command line read over a ``--config`` file.

Its errors are one line (``interp <command>: error: ...``, exit 2), like the rest, and no option is abbreviated.
"""

from __future__ import annotations

import argparse
import sys

from . import analyze, evaluate, figures, plan, restore, study


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (``interp <command>: error: ...``, exit 2), like the rest, and
    no abbreviated options (``--conf`` would be ``--config`` to argparse but not to the file reader)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The ``interp`` parser: every subcommand with its options, each on/off flag with its undo, and
    ``--config``."""
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
    for add in (*stages, evaluate.judge_parser, study.protocol_parser, plan.plan_parser, figures.figures_parser):
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


def parse(argv: list[str] | None) -> argparse.Namespace:
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
