"""One config file per study: a command's options in TOML, and the resolved options written beside its
outputs.

``interp <command> --config study.toml`` reads the file's options for that command: the long option names
(``-`` or ``_``, not both for one option: ``steps = 150``, ``judge = ["guard:..."]``, ``full = true``) at
the top level, and in a table named after the command (``[restore] steps = 150``), whose keys override the
top level's; the tables of other commands are skipped, so one file can hold a whole study. Flags given on
the command line override the file (a repeatable option such as ``--judge`` adds to the file's list; every
on/off flag has its opposite, ``--no-reasoning``, ``--cache``, to undo the file's). Every key is checked
against the command's options before any work: an unknown key, a table that names no command, a wrong
kind of value or a value outside an option's choices is one line naming the key. Relative paths in the
file (models, prompt files, layer maps, adapters, judges' folders, ``out``) are read from the file's
folder, not from where the command runs.

Each command with an output folder writes ``config.toml`` there (``resolved``): every option as it was
resolved (file, flags and defaults; unset options left out; paths made absolute), then a
``[provenance]`` table with the time, the processes it ran in (``parallel``: ``none``, ``data`` or
``fsdp``, ``interp.distributed``), the package versions and the models' weight fingerprints. Running the
command again with that file (and no other flag) runs it with the same options into the same folder;
if a model's weights are no longer those the file names (``check_fingerprints``), the run stops in one
line before any work on them. A run that adds to results kept in its output folder (``interp protocol``
run a seed per sitting) checks the folder's own file the same way (``folder_run``, ``check_continues``):
the compute dtype before any model loads, the weights as soon as the pair is loaded.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from . import distributed
from .errors import ConfigError
from .io.cache import CACHE_SCHEME

IGNORED = {"func", "command", "commands", "debug", "config", "expected_fingerprints"}  # not options of a run
PACKAGES = ("interp", "torch", "transformers", "transformer-lens", "peft", "accelerate", "scikit-learn")
COMMANDS = ("organism", "capture", "analyze", "restore", "evaluate", "run", "judge", "protocol", "plan", "figures")
# Options that name files or folders (a prompt-set spec may join several with commas).
PATH_OPTIONS = {"out", "base", "finetuned", "model", "layer_map", "adapter", "prompts", "harmful", "harmless"}
PATH_OPTIONS |= {"task", "xstest", "retain", "donotanswer", "judge", "run"}
SCHEMES = ("builtin:", "public:", "organism:", "classifier:", "guard:")
MAX_BYTES = 1 << 20  # a config file is options, not data


@dataclass
class ConfigFile:
    """What ``read`` found: the command's options (``{dest: value}``) and the weight fingerprints of the
    run that wrote the file (``[provenance]``: role -> fingerprint; empty for a hand-written file)."""

    options: dict
    fingerprints: dict[str, str] = field(default_factory=dict)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read(path: str | Path, parser: argparse.ArgumentParser, command: str | None = None) -> ConfigFile:
    """The options in the file at ``path`` for ``command`` (parsed by ``parser``), checked (module
    docstring)."""
    path = Path(path)
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise ConfigError(f"--config {path}: it {what}")
    if path.stat().st_size > MAX_BYTES:
        raise ConfigError(f"--config {path}: {path.stat().st_size:,} bytes is too large for a file of options")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"--config {path}: not TOML ({str(error)[:200]})") from None
    provenance = data.pop("provenance", {})
    top = {key: value for key, value in data.items() if not isinstance(value, dict)}
    for name, value in data.items():
        if isinstance(value, dict) and name not in COMMANDS:
            raise ConfigError(f"--config {path}: the table [{name}] names no command ({', '.join(COMMANDS)})")
    scoped = data.get(command, {}) if command else {}
    actions = {action.dest: action for action in parser._actions if action.dest not in IGNORED | {"help"}}
    out = {}
    for scope in (top, scoped):
        given: dict[str, str] = {}
        for name, value in scope.items():
            dest = name.replace("-", "_")
            if dest in given:
                raise ConfigError(f"--config {path}: {given[dest]!r} and {name!r} are one option, given twice")
            given[dest] = name
            action = actions.get(dest)
            if action is None:
                raise ConfigError(
                    f"--config {path}: {name!r} is not an option of this command; options: {', '.join(sorted(actions))}"
                )
            out[dest] = _resolve_paths(dest, _checked(path, name, value, action), path.parent)
    return ConfigFile(out, _fingerprints(provenance))


def _fingerprints(provenance) -> dict[str, str]:
    """role -> weight fingerprint, from a ``[provenance]`` table of the current fingerprint scheme."""
    if not isinstance(provenance, dict) or provenance.get("fingerprint_scheme") != CACHE_SCHEME:
        return {}
    return {
        key.removeprefix("fingerprint_"): str(value)
        for key, value in provenance.items()
        if key.startswith("fingerprint_") and key != "fingerprint_scheme"
    }


def _resolve_paths(dest: str, value, folder: Path):
    """Relative paths of a path option, read from ``folder`` (the config file's): ``out`` always, others
    where that path exists (else they may be hub ids, left as written)."""
    if dest not in PATH_OPTIONS:
        return value
    if isinstance(value, list):
        return [_resolve_paths(dest, item, folder) for item in value]
    if not isinstance(value, str):
        return value
    if dest in ("harmful", "harmless", "task", "xstest", "retain", "donotanswer", "prompts") and "," in value:
        return ",".join(_resolve_paths(dest, part.strip(), folder) for part in value.split(","))
    scheme = next((s for s in ("classifier:", "guard:") if value.startswith(s)), "")
    text = value[len(scheme) :]
    if value.startswith(SCHEMES) and not scheme or Path(text).is_absolute() or not text:
        return value
    bare, at, label = text.partition("@") if scheme == "classifier:" else (text, "", "")
    if dest == "out" or (folder / bare).exists():
        return scheme + str((folder / bare).absolute()) + at + label
    return value


def check_fingerprints(expected: dict[str, str], **models) -> None:
    """``ConfigError`` naming the first model whose weights are not those the config file's run used."""
    for role, model in models.items():
        if role in expected and model is not None and expected[role] != model.fingerprint:
            raise ConfigError(
                f"the --config file's run used {role} weights with fingerprint {expected[role]}; {model.name} has "
                f"{model.fingerprint} (other weights, tokenizer or settings): give the models it names, or delete "
                "its [provenance] table to run on these"
            )


def folder_run(folder: str | Path) -> ConfigFile | None:
    """What the ``config.toml`` a command wrote in ``folder`` records: its options as written (not checked
    against a parser) and its models' weight fingerprints; ``None`` where the folder has none."""
    path = Path(folder) / "config.toml"
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the options of the run that wrote it ({error})") from None
    provenance = data.pop("provenance", {})
    return ConfigFile({k: v for k, v in data.items() if not isinstance(v, dict)}, _fingerprints(provenance))


def run_dtype(folder: str | Path) -> str | None:
    """The compute dtype the run that wrote ``folder`` recorded (``folder_run``); ``None`` where it has none."""
    earlier = folder_run(folder)
    return None if earlier is None else earlier.options.get("dtype")


def check_continues(folder: str | Path, earlier: ConfigFile | None, dtype: str | None = None, **models) -> None:
    """``ConfigError`` where a run would add to ``folder`` results that do not fit those kept there: a
    compute ``dtype`` other than the one ``earlier`` (``folder_run``) records, or a model whose weights are
    not those it records. Checked before the work that would be thrown away: the dtype before any model
    loads, the weights as soon as the pair is loaded."""
    if earlier is None:
        return
    was = earlier.options.get("dtype")
    if dtype is not None and was not in (None, "auto") and was != dtype:
        raise ConfigError(
            f"{folder} holds results computed in {was}; this run would compute in {dtype}: add --dtype {was} to "
            "continue them, or choose another --out"
        )
    for role, model in models.items():
        expected = earlier.fingerprints.get(role)
        if expected is not None and model is not None and expected != model.fingerprint:
            raise ConfigError(
                f"{folder} holds results made with {role} weights {expected}; this run's {role} weights are "
                f"{model.fingerprint} (an organism trained on first use can come out different on another "
                "machine): continue the folder where its models were made, or choose another --out"
            )


def _checked(path, name: str, value, action: argparse.Action):
    """``value`` as the option's action would have parsed it from the command line."""
    where = f"--config {path}: {name}"
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {_short(value)}")
        return value
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+")
    if many != isinstance(value, list):
        raise ConfigError(f"{where} must be {'a list' if many else 'one value, not a list'}, got {_short(value)}")
    items = value if many else [value]
    converted = []
    for item in items:
        if isinstance(item, dict | list):
            raise ConfigError(f"{where}: {_short(item)} is not a value")
        if action.type is not None:
            try:
                item = action.type(str(item))
            except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
                raise ConfigError(f"{where}: {_short(item)} ({error})") from None
        if action.choices is not None and item not in action.choices:
            raise ConfigError(f"{where}: {_short(item)} is not one of {', '.join(map(str, action.choices))}")
        converted.append(item)
    return converted if many else converted[0]


def resolved(args: argparse.Namespace, fingerprints: dict[str, str] | None = None) -> str:
    """``config.toml`` for a command run with ``args`` (module docstring)."""
    lines = [f"# interp {args.command}: the options this run resolved; rerun with --config this file", ""]
    for dest, value in sorted(vars(args).items()):
        if dest in IGNORED or value is None or (isinstance(value, list) and not value):
            continue
        lines.append(f"{dest} = {_value(_resolve_paths(dest, value, Path.cwd()))}")
    lines += ["", "[provenance]", f"written = {_value(time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))}"]
    parallel = "fsdp" if distributed.sharded() else "data" if distributed.launched() else "none"
    lines += [f"processes = {distributed.world()}", f"parallel = {_value(parallel)}"]
    for package in PACKAGES:
        try:
            lines.append(f"{_key(package)} = {_value(metadata.version(package))}")
        except metadata.PackageNotFoundError:
            continue
    if fingerprints:
        lines.append(f"fingerprint_scheme = {CACHE_SCHEME}")
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
