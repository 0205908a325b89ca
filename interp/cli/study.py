"""``interp organism``, ``interp run`` and ``interp protocol``: the default pair, and the studies of a pair.

``organism`` builds (or loads) the default pair; ``run`` is the whole study, on it or on the user's pair;
``protocol`` is the pre-registered test of the layer map (interp/data/protocol.toml) on the default pair.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..io.atomic import check_output, output_folder
from ..io.stopwatch import Stopwatch
from . import common


def organism_parser(sub) -> None:
    p = sub.add_parser(
        "organism",
        help="build or load the default base/fine-tuned pair (cached)",
        description="Safety-tune SmolLM2-135M-Instruct into an aligned base, then fine-tune "
        "it on arithmetic; cache both and print their measured behaviour. The default recipe's two "
        "fp16 LoRA adapters ship with interp (hash-pinned): the pair is merged from them unless --rebuild.",
    )
    p.add_argument("--seed", type=int, default=None, help="the recipe's seed (default: the named recipe's)")
    common.add_recipe_option(p)
    p.add_argument("--force", action="store_true", help="make the pair again even if cached")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="train the pair from the recipe instead of merging the shipped adapters, and say whether the "
        "rebuilt adapters equal the shipped ones (minutes)",
    )
    p.set_defaults(func=cmd_organism)


def cmd_organism(args) -> None:
    """The default pair, built or loaded from the cache, and its measured behaviour."""
    from dataclasses import replace

    from ..organism import build_organism, recipe_named
    from ..report.study_tables import organism_table

    recipe = recipe_named(args.recipe)
    recipe = recipe if args.seed is None else replace(recipe, seed=args.seed)
    organism = build_organism(recipe, force=args.force, rebuild=args.rebuild)
    print(f"base:      {organism.base_path}\nfinetuned: {organism.finetuned_path}")
    print(organism_table(organism.manifest))
    if "metrics_note" in organism.manifest:
        print(f"({organism.manifest['metrics_note']})")


def run_parser(sub) -> None:
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
    common.add_recipe_option(p)
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


def cmd_run(args) -> None:
    """The whole study: organism (or the user's pair) -> analysis -> restoration + baselines -> evaluation."""
    from ..analyze import layer_table
    from ..config_file import check_fingerprints
    from ..core.prompts import parse_spec
    from ..default_run import run_default
    from ..organism import resolve_model_name
    from ..report.study_tables import results_table

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


def protocol_parser(sub) -> None:
    p = sub.add_parser(
        "protocol",
        help="the pre-registered test of the layer map: seeds, random draws, per-plan lr, matched over-refusal",
        description="Follow interp/data/protocol.toml on an organism (--recipe; by default the default pair): "
        "choose each plan family's learning rate on the dev part of the suite, train every plan (ranked, bottom, "
        "all layers, random draws) at every seed, judge them on the test part, and write the claim table "
        "(protocol.md, protocol.json).",
    )
    p.add_argument("--out", default="runs/protocol", help="output folder")
    p.add_argument("--tiny", action="store_true", help="the reduced organism, two seeds, three draws, a few steps (CI)")
    p.add_argument("--dev-only", action="store_true", help="stop once the learning rates are chosen on dev")
    common.add_recipe_option(p)
    p.add_argument(
        "--layers", action="store_true",
        help="instead: LoRA on every single block at every seed, judged on dev (the per-block ground truth), and"
        " how well each candidate ranking predicts it (layers.md)",
    )  # fmt: skip
    p.add_argument(
        "--layers-on-test", metavar="STUDY",
        help="instead: the same single-block trainings as the --layers study in STUDY (its lr and seeds; cached),"
        " judged on test, and how well its candidates predict that (layers.md): the ranking's out-of-sample check",
    )  # fmt: skip
    p.add_argument(
        "--components", action="store_true",
        help="instead: LoRA on every single attention and MLP at every seed, judged on dev (the per-component ground"
        " truth), and how well the component map predicts it (components.md)",
    )  # fmt: skip
    p.add_argument(
        "--frontier", metavar="RUN",
        help="instead: the ranking's top k against 10 random k-sets for k = 1..8, every seed, judged on test, at"
        " the learning rates the protocol run RUN (same ranking) chose on dev (frontier_test.md)",
    )  # fmt: skip
    p.add_argument(
        "--seeds", type=int, nargs="+", metavar="SEED",
        help="train only these of the protocol's seeds now (the protocol, or --frontier); the other seeds' results"
        " come from OUT's earlier run of the same study where it has them, so a study can run a seed per sitting."
        " The protocol stops after them (a partial result); without --seeds it completes: the seeds still missing,"
        " then the released recipe, full table, published methods and strength sweep",
    )  # fmt: skip
    p.add_argument(
        "--released", action="store_true", help="also train the released SafeReAct recipe for H4 (38-49 min on 2 cores)"
    )
    p.add_argument(
        "--peers", action="store_true",
        help="also the published weight-space methods (interpolation, RESTA, Safe LoRA, Antidote), each at its"
        " dev-chosen setting, from the organism's source, base and fine-tuned weights",
    )  # fmt: skip
    p.add_argument(
        "--ranking", metavar="FOLDER",
        help="rank the layers by the candidate a --layers run in FOLDER chose on dev (its layers.json) instead of"
        " the layer map's score: the ranked plan, bottom-k and the depth-range draws follow it",
    )  # fmt: skip
    p.add_argument(
        "--family", action="store_true",
        help="run the protocol on every organism of the family (or --recipes) into OUT/NAME, skipping those already"
        " done, then write OUT/family.md: the claim per organism",
    )  # fmt: skip
    p.add_argument("--recipes", nargs="+", choices=common.RECIPE_CHOICES, help="with --family: these organisms")
    p.add_argument(
        "--candidate", metavar="NAME",
        help="with --ranking: this candidate of the study (e.g. 'Safe LoRA cosine') instead of the one the protocol"
        " file's rule chose",
    )  # fmt: skip
    common.add_at_answer_option(p)
    common.add_model_options(p)
    p.set_defaults(func=cmd_protocol)


def cmd_protocol(args) -> None:
    """The pre-registered test of the central claim (interp/data/protocol.toml) on the default pair."""
    from dataclasses import replace

    from ..config_file import check_continues, folder_run
    from ..core.models import load_model
    from ..default_run import prepare
    from ..evaluation.table import EvalConfig
    from ..organism import study_evaluation
    from ..protocol import Protocol, run_protocol
    from ..protocol.bench import Bench
    from ..protocol.components import component_validity
    from ..protocol.frontier import DRAWS, KS, frontier_test, save_frontier
    from ..protocol.layers import LayerValidity, layer_validity, layer_validity_on_test
    from ..protocol.report import ProtocolResult
    from ..training.restore_config import PRESETS, RestoreConfig

    if args.at_answer and (args.family or args.ranking or args.frontier):
        raise ConfigError("--at-answer ranks by the layer map read at the final answer: drop --family, --ranking and "
                          "--frontier")  # fmt: skip
    if args.family:
        return _family(args)
    if args.recipes:
        raise ConfigError("--recipes names the organisms of --family: add --family")
    chosen = {"--layers": args.layers, "--layers-on-test": args.layers_on_test, "--components": args.components,
              "--frontier": args.frontier}  # fmt: skip
    studies = [flag for flag, on in chosen.items() if on]
    if len(studies) > 1:
        raise ConfigError(f"{' and '.join(studies)} are separate studies: run them one at a time")
    alone = studies[0] if studies and studies[0] != "--frontier" else None
    if alone and (args.released or args.peers or args.dev_only or args.ranking):
        raise ConfigError(f"{alone} runs its study alone: drop --released, --peers, --dev-only and --ranking")
    if args.candidate and not args.ranking:
        raise ConfigError("--candidate names a candidate of a --ranking FOLDER: give the folder too")
    ranking = None
    if args.ranking:  # read before any model loads: a bad folder or name is one line
        study = LayerValidity.load(args.ranking)
        name = args.candidate or study.chosen
        if name not in study.candidates:
            raise ConfigError(
                f"--candidate {name!r} is not in {args.ranking}/layers.json: one of {sorted(study.candidates)}"
            )
        ranking = (name, study.candidates[name])
    dev_study = LayerValidity.load(args.layers_on_test) if args.layers_on_test else None  # one line if bad
    if args.seeds and (alone or args.dev_only):
        raise ConfigError(f"--seeds chooses the seeds of the protocol or --frontier: drop {alone or '--dev-only'}")
    if args.frontier:  # its learning rates come from a protocol run with the same ranking
        if args.released or args.peers or args.dev_only:
            raise ConfigError("--frontier runs its study alone: drop --released, --peers and --dev-only")
        lrs_from = ProtocolResult.load(args.frontier)
        ranked_by = (lrs_from.ranking or {}).get("name", "layer map score")
        if ranked_by != (ranking[0] if ranking else "layer map score"):
            raise ConfigError(
                f"{args.frontier} ranked by {ranked_by!r}: give the same ranking (--ranking, --candidate)"
            )
    check_output(args.out, "protocol")
    common.check_device(args)
    protocol = Protocol.load()
    protocol = protocol.tiny() if args.tiny else protocol
    if args.seeds and not set(args.seeds) <= set(protocol.seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))}: the protocol's seeds are {list(protocol.seeds)}")
    earlier = Path(args.out) if Path(args.out).is_dir() else None  # what a former run kept there is reused
    kept = folder_run(earlier) if earlier else None
    check_continues(args.out, kept, dtype=args.dtype)  # the weights are checked once the pair is loaded

    def same_weights(pair) -> None:
        check_continues(args.out, kept, base=pair.base, finetuned=pair.finetuned)

    with output_folder(args.out, "protocol") as folder:
        prepared = prepare(folder, size="smoke" if args.tiny else "full", k=protocol.k, recipe_name=args.recipe,
                           load_options=common.model_options(args), check_pair=same_weights,
                           at_answer=args.at_answer)  # fmt: skip
        if args.at_answer:  # the same scores, named for the report
            ranking = ("layer map score at the final answer", list(prepared.analysis.layer_map.scores))
        budgets = prepared.recipe.evaluation
        small = EvalConfig(max_new_tokens=budgets.max_new_tokens, task_max_new_tokens=budgets.task_max_new_tokens)
        restore = RestoreConfig(batch_size=4) if args.tiny else RestoreConfig()
        released = PRESETS["safereact"].config if args.released else None
        if released is not None and args.tiny:
            released = replace(released, steps=2, batch_size=4)
        evaluation = small if args.tiny else EvalConfig()
        if not args.tiny:  # the reasoning organism: room for a trace, and the final answer judged
            evaluation = study_evaluation(prepared.recipe, evaluation)
        if studies:  # one study alone: the frontier on test, or a ground truth on dev
            analysis = prepared.analysis
            if ranking is not None:
                analysis = replace(analysis, layer_map=analysis.layer_map.reranked(ranking[1], ranking[0], protocol.k))
            bench = Bench(prepared.pair, analysis, prepared.harmful, prepared.retain, evaluation, prepared.recipe.chat)
            watch = Stopwatch()
            if args.frontier:  # the ranking at every k against random draws, on test
                with watch("frontier on test"):
                    found = frontier_test(bench, prepared.suite, lrs_from.lrs, protocol=protocol, restore=restore,
                                          ks=(1, 2) if args.tiny else KS, draws=2 if args.tiny else DRAWS,
                                          seeds=args.seeds, earlier=earlier, folder=folder)  # fmt: skip
                    save_frontier(found, folder, ranking[0] if ranking else "layer map score", protocol.seeds)
            elif dev_study is not None:  # the per-block ground truth on test, for the dev study's candidates
                with watch("single blocks on test"):
                    layer_validity_on_test(bench, prepared.suite, dev_study, protocol=protocol,
                                           restore=restore).save(folder)  # fmt: skip
            elif args.components:  # the per-component ground truth on dev, and the component map against it
                with watch("single components"):
                    component_validity(bench, prepared.suite, protocol=protocol, restore=restore).save(folder)
            else:  # the per-block ground truth on dev, and the candidate rankings against it
                with watch("single blocks"):
                    unaligned = load_model(prepared.recipe.source, dtype="float32") if prepared.organism else None
                    layer_validity(bench, prepared.suite, protocol=protocol, restore=restore,
                                   prompts=prepared.prompts, unaligned=unaligned).save(folder)  # fmt: skip
            seconds = watch.seconds
        else:
            result = run_protocol(
                prepared.pair, prepared.analysis, folder, harmful=prepared.harmful, retain=prepared.retain,
                suite=prepared.suite, protocol=protocol, restore=restore, evaluation=evaluation,
                chat=prepared.recipe.chat, dev_only=args.dev_only, released=released,
                unaligned=load_model(prepared.recipe.source, dtype="float32") if args.peers else None,
                ranking=ranking, seeds=args.seeds, earlier=earlier,
            )  # fmt: skip
            seconds = result.seconds
        common.write_config(args, folder, prepared.pair)
    report = {
        "--layers": "layers.md",
        "--layers-on-test": "layers.md",
        "--components": "components.md",
        "--frontier": "frontier_test.md",
    }.get(  # fmt: skip
        studies[0] if studies else "", "protocol.md"
    )
    print((Path(args.out) / report).read_text())
    print("time: " + ", ".join(f"{stage} {s:.0f}s" for stage, s in {**prepared.seconds, **seconds}.items()))


FAMILY_HEADER = "# The claim across the organism family"


def family_folders(out: Path) -> dict[str, Path]:
    """Every organism with a protocol run in ``out`` (``OUT/NAME/protocol.json``), in the family's order: the
    table covers all of them, not only those this call ran."""
    return {name: out / name for name in common.RECIPE_CHOICES if (out / name / "protocol.json").exists()}


def _family(args) -> None:
    """``interp protocol --family``: the protocol on each organism into OUT/NAME (those with a
    ``protocol.json`` are kept as they are), then OUT/family.md (``interp.protocol.family``)."""
    from argparse import Namespace

    from ..config_file import run_dtype
    from ..io.atomic import atomic_write_text
    from ..protocol.family import family_table, seed_overlap
    from ..protocol.report import ProtocolResult

    extra = [flag for flag, on in (("--layers", args.layers), ("--layers-on-test", args.layers_on_test),
                                   ("--components", args.components), ("--frontier", args.frontier),
                                   ("--ranking", args.ranking), ("--dev-only", args.dev_only)) if on]  # fmt: skip
    if extra:
        raise ConfigError(f"--family runs the test protocol on each organism: drop {', '.join(extra)}")
    out = Path(args.out)
    table = out / "family.md"
    if table.exists() and not table.read_text().startswith(FAMILY_HEADER):
        raise ConfigError(f"{table} exists and was not written by interp protocol --family: choose another --out")
    names = args.recipes or list(common.RECIPE_CHOICES)
    for name in names:
        if (out / name / "protocol.json").exists():
            done = ProtocolResult.load(out / name)
            if not done.missing_seeds or (args.seeds and set(args.seeds) <= set(done.rows)):
                print(f"family: {name} already done in {out / name}" + (" (partial)" if done.missing_seeds else ""))
                continue
        cmd_protocol(Namespace(**{**vars(args), "family": False, "recipes": None, "recipe": name,
                                  "out": str(out / name)}))  # fmt: skip
    folders = family_folders(out)
    overlap = seed_overlap(folders)
    text = (
        f"{FAMILY_HEADER}\n\n`interp protocol --family` on {', '.join(folders)}.\n\n"
        + family_table(folders, dtypes={name: run_dtype(folder) for name, folder in folders.items()})
        + "\n"
    )
    atomic_write_text(table, text + (f"\n{overlap}\n" if overlap else ""))
    print(table.read_text())
