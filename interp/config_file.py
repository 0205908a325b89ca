"""One config file per study: a command's options in TOML, and the resolved options written beside its
outputs.

``interp <command> --config study.toml`` reads the file's keys as that command's options (the long option
names, ``-`` or ``_``: ``steps = 150``, ``judge = ["guard:..."]``, ``full = true``); tables only group keys
(``[restore] steps = 150`` is ``steps = 150``), and the ``[provenance]`` table is ignored. Flags given on
the command line override the file. Every key is checked against the command's options before any work:
an unknown key, a wrong kind of value or a value outside an option's choices is one line naming the key.

Each command with an output folder writes ``config.toml`` there (``resolved``): every option as it was
resolved (file, flags and defaults; unset options left out), then a ``[provenance]`` table with the
time, the processes it ran in (``parallel``: ``none``, ``data`` or ``fsdp``, ``interp.distributed``), the
package versions and the models' weight fingerprints. Running the command again with that file
runs it with the same options.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from importlib import metadata
from pathlib import Path

from . import distributed
from .errors import ConfigError

IGNORED = {"func", "command", "commands", "debug", "config"}  # not options of a run
PACKAGES = ("interp", "torch", "transformers", "transformer-lens", "peft", "accelerate", "scikit-learn")


def read(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """The options in the file at ``path`` for the command ``parser`` parses, checked: ``{dest: value}``."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"--config {path}: not TOML ({error})") from None
    data.pop("provenance", None)
    flat: dict = {}
    for key, value in data.items():
        for name, item in value.items() if isinstance(value, dict) else [(key, value)]:
            if name in flat:
                raise ConfigError(f"--config {path}: {name!r} is given twice")
            flat[name] = item
    actions = {action.dest: action for action in parser._actions if action.dest not in IGNORED | {"help"}}
    out = {}
    for name, value in flat.items():
        dest = name.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise ConfigError(
                f"--config {path}: {name!r} is not an option of this command; options: {', '.join(sorted(actions))}"
            )
        out[dest] = _checked(path, name, value, action)
    return out


def _checked(path, name: str, value, action: argparse.Action):
    """``value`` as the option's action would have parsed it from the command line."""
    where = f"--config {path}: {name}"
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+")
    if many != isinstance(value, list):
        raise ConfigError(f"{where} must be {'a list' if many else 'one value, not a list'}, got {value!r}")
    items = value if many else [value]
    converted = []
    for item in items:
        if isinstance(item, dict | list):
            raise ConfigError(f"{where}: {item!r} is not a value")
        if action.type is not None:
            try:
                item = action.type(str(item))
            except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
                raise ConfigError(f"{where}: {item!r} ({error})") from None
        if action.choices is not None and item not in action.choices:
            raise ConfigError(f"{where}: {item!r} is not one of {', '.join(map(str, action.choices))}")
        converted.append(item)
    return converted if many else converted[0]


def resolved(args: argparse.Namespace, fingerprints: dict[str, str] | None = None) -> str:
    """``config.toml`` for a command run with ``args`` (module docstring)."""
    lines = [f"# interp {args.command}: the options this run resolved; rerun with --config this file", ""]
    for dest, value in sorted(vars(args).items()):
        if dest in IGNORED or value is None or (isinstance(value, list) and not value):
            continue
        lines.append(f"{dest} = {_value(value)}")
    lines += ["", "[provenance]", f"written = {_value(time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))}"]
    parallel = "fsdp" if distributed.sharded() else "data" if distributed.launched() else "none"
    lines += [f"processes = {distributed.world()}", f"parallel = {_value(parallel)}"]
    for package in PACKAGES:
        try:
            lines.append(f"{_key(package)} = {_value(metadata.version(package))}")
        except metadata.PackageNotFoundError:
            continue
    for name, fingerprint in (fingerprints or {}).items():
        lines.append(f"{_key('fingerprint ' + name)} = {_value(fingerprint)}")
    return "\n".join(lines) + "\n"


def _key(text: str) -> str:
    return text.replace(" ", "_").replace("-", "_")


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's
