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
from pathlib import Path

from .. import distributed
from ..config_file import COMMANDS
from ..errors import ConfigError, InterpError
from ..io import Stopwatch, check_output, output_folder
from . import analyze, common, evaluate, restore


# ----------------------------------------------------------------------------- stages
def cmd_organism(args) -> None:
    from dataclasses import replace

    from ..organism import OrganismRecipe, build_organism
    from ..report.tables import organism_table

    recipe = OrganismRecipe.reasoning() if args.recipe == "reasoning" else OrganismRecipe()
    organism = build_organism(replace(recipe, seed=args.seed), force=args.force, rebuild=args.rebuild)
    print(f"base:      {organism.base_path}\nfinetuned: {organism.finetuned_path}")
    print(organism_table(organism.manifest))
    if "metrics_note" in organism.manifest:
        print(f"({organism.manifest['metrics_note']})")


def cmd_run(args) -> None:
    """The whole study: organism (or the user's pair) -> analysis -> restoration + baselines -> evaluation."""
    from ..analyze import layer_table
    from ..config_file import check_fingerprints
    from ..core.prompts import parse_spec
    from ..organism import resolve_model_name
    from ..report.tables import results_table
    from ..study import run_default

    check_output(args.out, "run")
    common.check_device(args)
    if args.full and args.smoke:
        raise ConfigError("--full and --smoke are two sizes of run: choose one")
    task = parse_spec(args.task, 0) if args.task else None
    own = (args.base, args.finetuned) != ("organism:base", "organism:finetuned")

    def finish(folder, run) -> None:  # config.toml with the restoration as it ran (--smoke has its own)
        resolved = {k: v for k, v in run.study.details["restore_config"].items() if k in common.RESTORE_FLAGS}
        common.write_config(argparse.Namespace(**(vars(args) | resolved)), folder, run.pair)

    run = run_default(
        args.out,
        finish=finish,
        size="full" if args.full else "smoke" if args.smoke else "look",
        k=args.k,
        limit=args.limit,
        # --smoke without restoration flags: the smoke run's own restoration
        restore=None if args.smoke and not common.restore_flags(args) else common.restore_config(args),
        steer_scale=args.steer_scale,
        cache=not args.no_cache,
        reuse_analysis=args.skip_analysis,
        judges=tuple(args.judge),
        recipe_name=args.recipe,
        refusal_tokens=common.ints(args.refusal_tokens, "--refusal-tokens") or None,
        base=resolve_model_name(args.base) if own else None,
        finetuned=resolve_model_name(args.finetuned) if own else None,
        task=task,
        load_options=common.model_options(args),
        check_pair=lambda pair: check_fingerprints(
            args.expected_fingerprints, base=pair.base, finetuned=pair.finetuned
        ),
    )
    print(layer_table(run.analysis))
    print(results_table(run.study.rows))
    for t in run.study.targets:
        print(f"  [{t.verdict}] {t.target}: {t.value:.4g} (threshold {t.threshold:.4g})")
    print(
        f"run folder: {args.out} (report.md, report.json, layer_map.json, adapter/, restored/, figures/ "
        f"{len(run.figures)} files)"
    )
    print("time: " + ", ".join(f"{stage} {s:.0f}s" for stage, s in run.seconds.items()))
    print(f"total {sum(run.seconds.values()):.0f}s")


def cmd_protocol(args) -> None:
    """The pre-registered test of the central claim (interp/data/protocol.toml) on the default pair."""
    from dataclasses import replace

    from ..core.models import load_model
    from ..evaluation.table import EvalConfig
    from ..protocol import Protocol, run_protocol
    from ..protocol.bench import Bench
    from ..protocol.layers import layer_validity
    from ..study import prepare
    from ..training.restore import PRESETS, RestoreConfig

    if args.layers and (args.released or args.peers or args.dev_only):
        raise ConfigError("--layers runs the per-block study alone: drop --released, --peers and --dev-only")
    check_output(args.out, "protocol")
    common.check_device(args)
    protocol = Protocol.load()
    protocol = protocol.tiny() if args.tiny else protocol
    with output_folder(args.out, "protocol") as folder:
        prepared = prepare(folder, size="smoke" if args.tiny else "full", k=protocol.k,
                           load_options=common.model_options(args))  # fmt: skip
        budgets = prepared.recipe.evaluation
        small = EvalConfig(max_new_tokens=budgets.max_new_tokens, task_max_new_tokens=budgets.task_max_new_tokens)
        restore = RestoreConfig(batch_size=4) if args.tiny else RestoreConfig()
        released = PRESETS["safereact"].config if args.released else None
        if released is not None and args.tiny:
            released = replace(released, steps=2, batch_size=4)
        evaluation = small if args.tiny else EvalConfig()
        if args.layers:  # the per-block ground truth on dev, and the candidate rankings against it
            bench = Bench(prepared.pair, prepared.analysis, prepared.harmful, prepared.retain, evaluation,
                          prepared.recipe.chat)  # fmt: skip
            watch = Stopwatch()
            with watch("single blocks"):
                unaligned = load_model(prepared.recipe.source, dtype="float32") if prepared.organism else None
                layer_validity(bench, prepared.suite, protocol=protocol, restore=restore, prompts=prepared.prompts,
                               unaligned=unaligned).save(folder)  # fmt: skip
            seconds = watch.seconds
        else:
            result = run_protocol(
                prepared.pair, prepared.analysis, folder, harmful=prepared.harmful, retain=prepared.retain,
                suite=prepared.suite, protocol=protocol, restore=restore, evaluation=evaluation,
                chat=prepared.recipe.chat, dev_only=args.dev_only, released=released,
                unaligned=load_model(prepared.recipe.source, dtype="float32") if args.peers else None,
            )  # fmt: skip
            seconds = result.seconds
        common.write_config(args, folder, prepared.pair)
    print((Path(args.out) / ("layers.md" if args.layers else "protocol.md")).read_text())
    print("time: " + ", ".join(f"{stage} {s:.0f}s" for stage, s in {**prepared.seconds, **seconds}.items()))


def cmd_plan(args) -> None:
    """What a study of the pair will need per stage, from the configs alone (no weights loaded)."""
    from ..plan import Calibration, ModelShape, PlanSettings, plan, render

    for name in (args.base, args.finetuned):
        if name.startswith("organism:"):
            raise ConfigError(
                f"plan reads configs only: give the organism's folder ({name} is printed by interp organism)"
            )
    common.check_device(args)
    if args.fsdp and args.processes < 2:
        raise ConfigError("--fsdp shards the students over processes: give --processes N with N >= 2")
    settings = PlanSettings(
        dtype=args.dtype,
        prompt_tokens=args.prompt_tokens,
        plans=args.plans,
        steps=args.steps,
        batch_size=args.batch_size,
        rank=args.rank,
        eval_prompts=args.eval_prompts,
        eval_models=args.eval_models,
        max_new_tokens=args.max_new_tokens,
        processes=args.processes,
        fsdp=args.fsdp,
    )
    base, finetuned = ModelShape.load(args.base), ModelShape.load(args.finetuned)
    calibration = None if args.no_calibration else Calibration.measure(finetuned, args.device, args.dtype)
    print(render(plan(base, finetuned, settings, calibration), finetuned, settings, calibration))


# ----------------------------------------------------------------------------- the parser


def _organism_parser(sub) -> None:
    p = sub.add_parser(
        "organism",
        help="build or load the default base/fine-tuned pair (cached)",
        description="Safety-tune SmolLM2-135M-Instruct into an aligned base, then fine-tune "
        "it on arithmetic; cache both and print their measured behaviour. The default recipe's two "
        "fp16 LoRA adapters ship with interp (hash-pinned): the pair is merged from them unless --rebuild.",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--recipe",
        choices=["default", "reasoning"],
        default="default",
        help="reasoning: the task fine-tune answers with a <think> trace, then a short final answer (the shape "
        "of R1 distillation; trained, not shipped: minutes)",
    )
    p.add_argument("--force", action="store_true", help="make the pair again even if cached")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="train the pair from the recipe instead of merging the shipped adapters, and say whether the "
        "rebuilt adapters equal the shipped ones (minutes)",
    )
    p.set_defaults(func=cmd_organism)


def _run_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="the whole study, on the embedded default pair or on your own (--base, --finetuned)",
        description="Build or load the default pair (or load yours: --base, --finetuned), analyze it, export "
        "the layer map, restore with it, train the baselines, evaluate everything and write one run folder "
        "with report.md / report.json and figures. Without --full the evaluation is a quick look: a "
        "seeded sample of every held-out set.",
    )
    p.add_argument("--out", default="runs/default", help="run folder")
    p.add_argument(
        "--full",
        action="store_true",
        help="evaluate on the whole held-out suite (the README's table) instead of the quick look's sample",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest run: the reduced organism (or your pair), 8 prompts per set, 3 restoration steps: "
        "checks that everything works end to end (CI), its numbers mean nothing",
    )
    p.add_argument("--k", type=common.positive, default=3, help="layers to select for restoration")
    p.add_argument(
        "--limit",
        type=common.positive,
        default=None,
        help="evaluate on the first N prompts of each set only (quick look)",
    )
    p.add_argument("--skip-analysis", action="store_true", help="reuse the run folder's analysis if present")
    p.add_argument(
        "--steer-scale", type=float, default=1.0, help="multiple of the refusal vector for the steering baseline"
    )
    common.add_judge_option(p)
    p.add_argument(
        "--recipe",
        choices=["default", "reasoning"],
        default="default",
        help="reasoning: study the reasoning organism with the R1 chat format (trace and final answer judged apart)",
    )
    p.add_argument("--no-cache", action="store_true", help="retrain adapters and re-evaluate rows even if cached")
    p.add_argument(
        "--task",
        default=None,
        help="your task's prompts with reference answers (json/jsonl/csv with an 'answer' field; a third is held "
        "out for task accuracy, the rest retained on); default: the built-in arithmetic problems",
    )
    p.add_argument(
        "--refusal-tokens", default="", help="comma-separated token ids (default: read off the base's refusals)"
    )
    common.add_pair_options(p)
    common.add_restore_options(p)
    p.set_defaults(func=cmd_run)


def _protocol_parser(sub) -> None:
    p = sub.add_parser(
        "protocol",
        help="the pre-registered test of the layer map: seeds, random draws, per-plan lr, matched over-refusal",
        description="Follow interp/data/protocol.toml on the default pair: choose each plan family's learning "
        "rate on the dev part of the suite, train every plan (ranked, bottom, all layers, random draws) at "
        "every seed, judge them on the test part, and write the claim table (protocol.md, protocol.json).",
    )
    p.add_argument("--out", default="runs/protocol", help="output folder")
    p.add_argument("--tiny", action="store_true", help="the reduced organism, two seeds, three draws, a few steps (CI)")
    p.add_argument("--dev-only", action="store_true", help="stop once the learning rates are chosen on dev")
    p.add_argument(
        "--layers", action="store_true",
        help="instead: LoRA on every single block at every seed, judged on dev (the per-block ground truth), and"
        " how well each candidate ranking predicts it (layers.md)",
    )  # fmt: skip
    p.add_argument(
        "--released", action="store_true", help="also train the released SafeReAct recipe for H4 (~23 min here)"
    )
    p.add_argument(
        "--peers", action="store_true",
        help="also the published weight-space methods (interpolation, RESTA, Safe LoRA, Antidote), each at its"
        " dev-chosen setting, from the organism's source, base and fine-tuned weights",
    )  # fmt: skip
    common.add_model_options(p)
    p.set_defaults(func=cmd_protocol)


def _plan_parser(sub) -> None:
    from ..plan import PlanSettings

    d = PlanSettings()
    p = sub.add_parser(
        "plan",
        help="memory, passes, tokens and a time estimate per stage, from the two configs (no weights read)",
    )
    p.add_argument("--base", required=True, help="folder with config.json, a config.json, or a cached hub id")
    p.add_argument("--finetuned", required=True, help="as --base")
    p.add_argument(
        "--dtype", default="auto", choices=common.DTYPE_CHOICES, help="as for the study (auto: this device's)"
    )
    p.add_argument("--device", default="cpu", help="where the calibration runs (the device of the study)")
    p.add_argument("--prompt-tokens", type=common.positive, default=d.prompt_tokens, help="longest prompt in a batch")
    p.add_argument("--plans", type=common.positive, default=d.plans, help="restorations trained in lockstep")
    p.add_argument("--steps", type=common.positive, default=d.steps)
    p.add_argument("--batch-size", type=common.positive, default=d.batch_size)
    p.add_argument("--rank", type=common.positive, default=d.rank)
    p.add_argument(
        "--eval-prompts", type=common.positive, default=d.eval_prompts, help="prompts of the evaluation suite"
    )
    p.add_argument("--eval-models", type=common.positive, default=d.eval_models, help="rows of the evaluation table")
    p.add_argument("--max-new-tokens", type=common.positive, default=d.max_new_tokens)
    p.add_argument("--processes", type=common.positive, default=d.processes, help="accelerate launch --num_processes")
    p.add_argument("--fsdp", action="store_true", help="the restoration's students sharded (an FSDP launch)")
    p.add_argument("--no-calibration", action="store_true", help="no time estimate (nothing runs)")
    p.set_defaults(func=cmd_plan)


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
        _organism_parser,
        analyze.capture_parser,
        analyze.analyze_parser,
        restore.restore_parser,
        evaluate.evaluate_parser,
        _run_parser,
    )
    for add in (*stages, evaluate.judge_parser, _protocol_parser, _plan_parser):
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
