"""Command line: one subcommand per stage. Bad input ends in one clear line, not a traceback."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import InterpError


def _prompt_set(spec: str, label: int | None):
    """``builtin:harmful[:split]``, ``builtin:harmless[:split]``, ``builtin:arithmetic[:split]`` or a file."""
    from . import prompts

    if spec.startswith("builtin:"):
        parts = spec.split(":")
        name, split = parts[1], (parts[2] if len(parts) > 2 else "train")
        loaders = {"harmful": prompts.harmful_prompts, "harmless": prompts.harmless_prompts,
                   "arithmetic": prompts.arithmetic_prompts}
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
    config = AnalysisConfig(k=args.k, causal_prompts=args.causal_prompts, batch_size=args.batch_size,
                            steer_scales=tuple(float(x) for x in args.steer_scales.split(",")))
    result = analyze(pair, Path(args.out), config, prompts)
    print((Path(args.out) / "layer_table.md").read_text())
    print(f"selected layers: {result.layer_map.selected_layers}  ->  {Path(args.out) / 'layer_map.json'}")


def cmd_run(args) -> None:
    """The study on the default pair, as far as it is built today: organism -> analysis -> figures."""
    import time

    from .analyze import AnalysisConfig, AnalysisPrompts, analyze, load_run, write_figures
    from .organism import build_organism, summary_table

    out = Path(args.out)
    start = time.perf_counter()
    organism = build_organism()
    print(summary_table(organism.manifest))
    pair = organism.load_pair()
    analyze(pair, out, AnalysisConfig(k=args.k), AnalysisPrompts.held_out_for_organism())
    paths = write_figures(load_run(out), out / "figures")
    print((out / "layer_table.md").read_text())
    print(f"figures: {out / 'figures'} ({len(paths)} files); total {time.perf_counter() - start:.0f}s")


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
    p = sub.add_parser("run", help="the study on the embedded default pair (organism, analysis, figures)",
                       description="Build or load the default pair, analyze it, export the layer map and "
                                   "figures into one run folder.")
    p.add_argument("--out", default="runs/default", help="run folder")
    p.add_argument("--k", type=int, default=3, help="layers to select for restoration")
    p.set_defaults(func=cmd_run)

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
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", required=True, help="run folder")
    _add_model_options(p)
    p.set_defaults(func=cmd_analyze)
    return parser


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
