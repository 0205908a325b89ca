"""Command line: one subcommand per stage. Bad input ends in one clear line, not a traceback."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import InterpError


def _prompt_set(spec: str, label: int | None):
    """``builtin:NAME[:split]`` (NAME: harmful, harmless, general, arithmetic) or a prompt file."""
    from . import prompts

    if spec.startswith("builtin:"):
        parts = spec.split(":")
        name, split = parts[1], (parts[2] if len(parts) > 2 else "train")
        loaders = {"harmful": prompts.harmful_prompts, "harmless": prompts.harmless_prompts,
                   "arithmetic": prompts.arithmetic_prompts, "general": prompts.general_prompts}
        if name not in loaders:
            raise InterpError(f"unknown built-in prompt set {name!r}; choose from {', '.join(loaders)}")
        return loaders[name](split)
    return prompts.load_prompts(spec, label=label)


def cmd_organism(args) -> None:
    from .organism import OrganismRecipe, build_organism, summary_table

    organism = build_organism(OrganismRecipe(seed=args.seed), force=args.force)
    print(f"base:      {organism.base_path}\nfinetuned: {organism.finetuned_path}")
    print(summary_table(organism.manifest))


def cmd_capture(args) -> None:
    from .capture import CaptureConfig, Positions, capture, hook_names
    from .models import load_model

    model = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)
    prompts = _prompt_set(args.prompts, None)
    if args.limit:
        prompts = prompts.head(args.limit)
    hooks = tuple(args.hooks.split(",")) if args.hooks else hook_names(model.n_layers, args.kind)
    config = CaptureConfig(hooks=hooks, positions=Positions.parse(args.positions), batch_size=args.batch_size)
    acts = capture(model, prompts, config)
    out = acts.save(Path(args.out))
    print(f"{tuple(acts.tensor.shape)} [prompt, hook, position, d_model] -> {out}")


def cmd_analyze(args) -> None:
    from .analyze import AnalysisConfig, AnalysisPrompts, analyze
    from .models import load_pair

    pair = load_pair(args.base, args.finetuned, dtype=args.dtype, device=args.device, device_map=args.device_map)
    prompts = AnalysisPrompts()
    for name in ("harmful", "harmless", "task"):
        spec = getattr(args, name)
        if spec:
            setattr(prompts, name, _prompt_set(spec, {"harmful": 1, "harmless": 0, "task": 0}[name]))
    prompts.__post_init__()
    tokens = tuple(int(t) for t in args.refusal_tokens.split(",")) if args.refusal_tokens else None
    config = AnalysisConfig(k=args.k, causal_prompts=args.causal_prompts, batch_size=args.batch_size,
                            steer_scales=tuple(float(x) for x in args.steer_scales.split(",")),
                            steer_max_new_tokens=args.max_new_tokens, refusal_tokens=tokens)
    result = analyze(pair, Path(args.out), config, prompts)
    print((Path(args.out) / "layer_table.md").read_text())
    print(f"selected layers: {result.layer_map.selected_layers}  ->  {Path(args.out) / 'layer_map.json'}")


def _prompt_sets(specs: str, label: int | None):
    """Comma-separated prompt-set specs joined into one set."""
    from functools import reduce

    sets = [_prompt_set(spec.strip(), label) for spec in specs.split(",") if spec.strip()]
    if not sets:
        raise InterpError("empty prompt-set option")
    return reduce(lambda a, b: a + b, sets)


def _restore_config(args):
    from .restore import RestoreConfig

    return RestoreConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, teacher=args.teacher,
                         distance=args.distance, retain_scale=args.retain_scale, seed=args.seed)


def cmd_restore(args) -> None:
    """LoRA on the layer map's layers of the fine-tuned model; writes the adapter and a merged folder."""
    from .io import atomic_write_json
    from .models import load_pair
    from .ranking import LayerMap
    from .restore import restore, save_adapter, save_merged

    layer_map = LayerMap.load(args.layer_map)
    pair = load_pair(args.base, args.finetuned, dtype=args.dtype, device=args.device, device_map=args.device_map)
    config = _restore_config(args)
    result = restore(pair.finetuned, layer_map, _prompt_sets(args.harmful, 1), _prompt_sets(args.retain, 0), config,
                     base=pair.base if config.teacher == "base" else None)
    out = Path(args.out)
    save_adapter(result.model, out / "adapter")
    atomic_write_json(out / "restore_stats.json", result.stats)
    if not args.no_merged:
        save_merged(result.model, pair.finetuned.tokenizer, out / "restored")
    history = result.stats["history"]
    print(f"layers {result.stats['layers']}, {result.stats['trainable_params']:,} trainable params, "
          f"{result.stats['seconds']:.0f}s; safety loss {history[0]['safety']:.3f} -> {history[-1]['safety']:.3f}")
    print(f"adapter: {out / 'adapter'}" + ("" if args.no_merged else f"\nmerged:  {out / 'restored'}"))


def cmd_evaluate(args) -> None:
    """The evaluation table for base, fine-tuned and any restored models or adapters."""
    from peft import PeftModel

    from .causal import find_refusal_tokens
    from .evaluate import Candidate, EvalConfig, EvalSuite, evaluate_models, table_markdown
    from .io import atomic_write_json, atomic_write_text
    from .models import fresh_copy, load_model, load_pair

    pair = load_pair(args.base, args.finetuned, dtype=args.dtype, device=args.device, device_map=args.device_map)
    options = {"dtype": args.dtype, "device": args.device, "device_map": args.device_map}
    candidates = [Candidate("base", pair.base), Candidate("finetuned", pair.finetuned)]
    for path in args.model:
        candidates.append(Candidate(Path(path).name, load_model(path, **options)))
    for path in args.adapter:
        model = fresh_copy(pair.finetuned)
        model.hf = PeftModel.from_pretrained(model.hf, path).merge_and_unload()
        model.name = f"finetuned + {Path(path).name}"
        model.forget_fingerprint()
        candidates.append(Candidate(model.name, model))
    task = _prompt_sets(args.task, 0)
    if args.shared:
        suite = EvalSuite.from_shared(task=task, data=args.shared, n_harmless=args.n_harmless)
    else:
        xstest = _prompt_sets(args.xstest, 0) if args.xstest else None
        suite = EvalSuite(harmful=_prompt_sets(args.harmful, 1), harmless=_prompt_sets(args.harmless, 0),
                          task=task, xstest=xstest)
    if args.limit:
        suite = suite.head(args.limit)
    if args.refusal_tokens:
        tokens = [int(t) for t in args.refusal_tokens.split(",")]
    else:  # the base model's own most common first refusal tokens, as in the analysis
        tokens = find_refusal_tokens(pair.base, suite.harmful)
    config = EvalConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    rows = evaluate_models(candidates, suite, refusal_tokens=tokens, reference=pair.finetuned, config=config,
                           cache=not args.no_cache)
    out = Path(args.out)
    atomic_write_json(out / "evaluation.json", {"models": rows, "refusal_tokens": tokens, "sizes": suite.sizes()})
    atomic_write_text(out / "evaluation.md", table_markdown(rows) + "\n")
    print(table_markdown(rows))


def cmd_run(args) -> None:
    """The whole study on the default pair: organism -> analysis -> restoration + baselines -> evaluation."""
    import time

    import matplotlib.pyplot as plt

    from .analyze import AnalysisConfig, AnalysisPrompts, analyze, load_run, write_figures
    from .evaluate import EvalConfig, table_markdown
    from .organism import OrganismRecipe, build_organism, study_prompts, summary_table
    from .plots import plot_restore_history, plot_results, save_figure
    from .study import StudyConfig, run_study

    out = Path(args.out)
    stages: dict[str, float] = {}
    start = clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        stages[name] = time.perf_counter() - clock
        clock = time.perf_counter()
        print(f"== {name}: {stages[name]:.0f}s (total {clock - start:.0f}s)", flush=True)

    recipe = OrganismRecipe()
    organism = build_organism(recipe)
    print(summary_table(organism.manifest))
    pair = organism.load_pair()
    harmful, retain, suite = study_prompts(recipe)
    if args.limit:
        suite = suite.head(args.limit)
    stage("pair")
    if args.skip_analysis and (out / "layer_map.json").exists():
        print(f"analysis: reusing {out / 'layer_map.json'}")
    else:
        # No generation check in the analysis: the study's steering row measures it on the full suite.
        analyze(pair, out, AnalysisConfig(k=args.k, steer_scales=()), AnalysisPrompts.held_out_for_organism())
    stage("analysis")
    config = StudyConfig(restore=_restore_config(args), evaluation=EvalConfig(batch_size=64),
                         steer_scale=args.steer_scale, cache=not args.no_cache)
    result = run_study(pair, out, harmful=harmful, retain=retain, suite=suite, config=config)
    stage("restoration and evaluation")
    paths = write_figures(load_run(out), out / "figures")
    paths += save_figure(plot_results(result.rows), out / "figures", "results")
    histories = {r.plan.name: r.stats["history"] for r in result.restored}
    paths += save_figure(plot_restore_history(histories), out / "figures", "restore_history")
    plt.close("all")
    stage("figures")
    print((out / "layer_table.md").read_text())
    print(table_markdown(result.rows))
    for target in result.targets:
        print(f"  [{'met' if target['met'] else 'MISSED'}] {target['target']}: {target['value']:.4g} "
              f"(threshold {target['threshold']:.4g})")
    print(f"run folder: {out} (report.md, report.json, layer_map.json, adapter/, restored/, figures/ "
          f"{len(paths)} files); total {time.perf_counter() - start:.0f}s")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--device-map", default=None,
                        help="'auto' to spread a large model over the available devices (accelerate)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interp", description="Where did safety go after fine-tuning, and how to put it back.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("organism", help="build or load the default base/fine-tuned pair (cached)",
                       description="Safety-tune SmolLM2-135M-Instruct into an aligned base, then fine-tune "
                                   "it on arithmetic; cache both and print their measured behaviour.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_organism)

    p = sub.add_parser("capture", help="capture activations of one model on a prompt set",
                       description="Record hook points at chosen token positions and save them as "
                                   "safetensors + JSON.")
    p.add_argument("--model", default="default",
                   help="'default', a hub id, a local Hugging Face folder or a .gguf file")
    p.add_argument("--prompts", default="builtin:harmful:val",
                   help="builtin:harmful|harmless|arithmetic[:train|val|all], or a .json/.jsonl/.csv/.txt file")
    p.add_argument("--limit", type=int, default=0, help="use only the first N prompts")
    p.add_argument("--kind", default="resid_post", help="hook kind at every layer (resid_post, attn_out, mlp_out, ...)")
    p.add_argument("--hooks", default="", help="comma-separated hook names (overrides --kind)")
    p.add_argument("--positions", default="last", help="last, last:K, instruction_mean, or offsets like -5,-1")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True, help="folder to write the activations to")
    _add_model_options(p)
    p.set_defaults(func=cmd_capture)
    p = sub.add_parser("run", help="the whole study on the embedded default pair",
                       description="Build or load the default pair, analyze it, export the layer map, restore "
                                   "with it, train the baselines, evaluate everything and write one run folder "
                                   "with report.md / report.json and figures.")
    p.add_argument("--out", default="runs/default", help="run folder")
    p.add_argument("--k", type=int, default=3, help="layers to select for restoration")
    p.add_argument("--limit", type=int, default=0, help="evaluate on the first N prompts of each set only (quick look)")
    p.add_argument("--skip-analysis", action="store_true", help="reuse the run folder's layer map if present")
    p.add_argument("--steer-scale", type=float, default=1.0, help="multiple of the refusal vector for the steering baseline")
    p.add_argument("--no-cache", action="store_true", help="retrain adapters and re-evaluate rows even if cached")
    _add_restore_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("restore", help="LoRA on the layer map's layers, pulling harmful prompts back to a safe teacher",
                       description="Train LoRA on the fine-tuned model's selected layers (from layer_map.json) so "
                                   "its hidden states on harmful prompts match the teacher's at the alignment "
                                   "layers, with a retain loss on everything else. Writes the adapter (peft "
                                   "format) and a merged Hugging Face folder.")
    _add_pair_options(p)
    p.add_argument("--layer-map", required=True, help="layer_map.json written by `interp analyze`")
    p.add_argument("--harmful", default="builtin:harmful:all", help="harmful prompts to restore refusal on")
    p.add_argument("--retain", default="builtin:harmless:all,builtin:general,builtin:arithmetic:train",
                   help="comma-separated prompt sets whose representations must stay (answers are used if present)")
    p.add_argument("--no-merged", action="store_true", help="write only the adapter")
    p.add_argument("--out", required=True, help="folder for adapter/, restored/ and restore_stats.json")
    _add_restore_options(p)
    _add_model_options(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("evaluate", help="the evaluation table: refusal, over-refusal, task accuracy, KL",
                       description="Greedy answers judged for refusal on harmful, harmless and XSTest safe prompts, "
                                   "the logit refusal score, task accuracy and the KL to the fine-tuned model, for "
                                   "base, fine-tuned and any restored models or adapters.")
    _add_pair_options(p)
    p.add_argument("--model", action="append", default=[], help="another model to evaluate (folder/hub id); repeatable")
    p.add_argument("--adapter", action="append", default=[],
                   help="a peft adapter folder, applied to the fine-tuned model; repeatable")
    p.add_argument("--shared", default="", help="folder with harmful_val.json, harmless_val.json, xstest_prompts.csv "
                                                "(use these public sets instead of --harmful/--harmless/--xstest)")
    p.add_argument("--n-harmless", type=int, default=200, help="harmless prompts sampled from --shared")
    p.add_argument("--harmful", default="builtin:harmful:val")
    p.add_argument("--harmless", default="builtin:harmless:val")
    p.add_argument("--xstest", default="", help="XSTest-like prompt file of safe prompts (optional)")
    p.add_argument("--task", default="builtin:arithmetic:val", help="task prompts with reference answers")
    p.add_argument("--limit", type=int, default=0, help="first N prompts of each set only")
    p.add_argument("--refusal-tokens", default="", help="comma-separated token ids (default: read off the base's refusals)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-cache", action="store_true", help="do not reuse cached rows")
    p.add_argument("--out", required=True, help="folder for evaluation.json and evaluation.md")
    _add_model_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("analyze", help="per-layer measures, causal checks, ranking and a layer map",
                       description="Capture both models, measure per layer what fine-tuning suppressed and "
                                   "amplified, run causal checks, rank layers and export layer_map.json.")
    _add_pair_options(p)
    p.add_argument("--harmful", default="", help="harmful prompts (default: the built-in set)")
    p.add_argument("--harmless", default="", help="harmless prompts (default: the built-in set)")
    p.add_argument("--task", default="", help="task prompts (default: built-in arithmetic)")
    p.add_argument("--k", type=int, default=3, help="layers to select for restoration")
    p.add_argument("--causal-prompts", type=int, default=16, help="harmful prompts in the causal sweep")
    p.add_argument("--steer-scales", default="1,2", help="multiples of the refusal vector to try, e.g. 1,2")
    p.add_argument("--refusal-tokens", default="",
                   help="comma-separated token ids that begin a refusal (default: read off the base's answers)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length in the steering check")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", required=True, help="run folder")
    _add_model_options(p)
    p.set_defaults(func=cmd_analyze)
    return parser


def _add_restore_options(parser: argparse.ArgumentParser) -> None:
    from .restore import RestoreConfig

    d = RestoreConfig()
    parser.add_argument("--steps", type=int, default=d.steps, help="restoration training steps")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--teacher", default=d.teacher, choices=["base", "reminder"],
                        help="base: the aligned model; reminder: the fine-tuned model with a safety reminder")
    parser.add_argument("--distance", default=d.distance, choices=["l2", "cosine"])
    parser.add_argument("--retain-scale", type=float, default=d.retain_scale)
    parser.add_argument("--seed", type=int, default=d.seed)


def _add_pair_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="organism:base",
                        help="aligned model: 'organism:base' (default pair), hub id, local folder or .gguf")
    parser.add_argument("--finetuned", default="organism:finetuned",
                        help="fine-tuned model: 'organism:finetuned', hub id, local folder or .gguf")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InterpError as error:
        print(f"interp {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
