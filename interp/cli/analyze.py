"""``interp capture`` and ``interp analyze``: what the models hold, layer by layer.

``capture`` records one model's activations; ``analyze`` measures the pair per layer, checks the measures
causally and writes the layer map that ``interp restore`` trains on.
"""

from __future__ import annotations

from pathlib import Path

from ..io.atomic import check_output, output_folder
from . import common


def capture_parser(sub) -> None:
    p = sub.add_parser(
        "capture",
        help="capture activations of one model on a prompt set",
        description="Record hook points at chosen token positions and save them as safetensors + JSON.",
    )
    p.add_argument(
        "--model",
        default="default",
        help="'default', 'organism:base', a hub id, a local Hugging Face folder or a .gguf file",
    )
    p.add_argument(
        "--prompts",
        default="builtin:harmful:val",
        help="builtin:harmful|harmless|general|arithmetic[:train|val|all], or a .json/.jsonl/.csv/.txt file",
    )
    p.add_argument("--limit", type=common.positive, default=None, help="use only the first N prompts")
    p.add_argument("--kind", default="resid_post", help="hook kind at every layer (resid_post, attn_out, mlp_out, ...)")
    p.add_argument("--hooks", default="", help="comma-separated hook names (overrides --kind)")
    p.add_argument("--positions", default="last", help="last, last:K, instruction_mean, or offsets like -5,-1")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True, help="folder to write the activations to")
    common.add_model_options(p)
    common.add_reasoning_option(p)
    p.set_defaults(func=cmd_capture)


def cmd_capture(args) -> None:
    """Activations of one model at the chosen hooks and positions, saved as safetensors + JSON."""
    from ..config_file import check_fingerprints
    from ..core.bridge import hook_names
    from ..core.chat import ChatFormat
    from ..core.models import load_model
    from ..core.prompts import parse_spec, without_duplicates
    from ..measures.capture import CaptureConfig, Positions, capture
    from ..organism import resolve_model_name

    check_output(args.out, "capture")  # before any work: never replace what interp did not write
    common.check_device(args)
    prompts = without_duplicates(parse_spec(args.prompts))
    positions = Positions.parse(args.positions)
    model = load_model(resolve_model_name(args.model), **common.model_options(args))
    ChatFormat.check(model.tokenizer, model.name)
    check_fingerprints(args.expected_fingerprints, model=model)
    if args.limit is not None:
        prompts = prompts.head(args.limit)
    hooks = tuple(args.hooks.split(",")) if args.hooks else hook_names(model.n_layers, args.kind)
    config = CaptureConfig(hooks=hooks, positions=positions, batch_size=args.batch_size, chat=common.chat(args))
    model.check_fits(prompts, config.chat)  # before any forward: every prompt inside the context window
    acts = capture(model, prompts, config)
    with output_folder(args.out, "capture") as out:
        acts.save(out)
        common.write_config(args, out, model=model)
    print(f"{tuple(acts.tensor.shape)} [prompt, hook, position, d_model] -> {args.out}")


def analyze_parser(sub) -> None:
    from ..analyze import AnalysisConfig

    d = AnalysisConfig()
    p = sub.add_parser(
        "analyze",
        help="per-layer measures, causal checks, ranking and a layer map",
        description="Capture both models, measure per layer what fine-tuning suppressed and "
        "amplified, run causal checks, rank layers and export layer_map.json.",
    )
    common.add_pair_options(p)
    p.add_argument("--harmful", default="", help="harmful prompts (default: the built-in set)")
    p.add_argument("--harmless", default="", help="harmless prompts (default: the built-in set)")
    p.add_argument("--task", default="", help="task prompts (default: built-in arithmetic)")
    p.add_argument("--k", type=common.positive, default=d.k, help="layers to select for restoration")
    p.add_argument("--causal-prompts", type=int, default=d.causal_prompts, help="harmful prompts in the causal sweep")
    p.add_argument(
        "--steer-scales",
        default=",".join(f"{s:g}" for s in d.steer_scales),
        help="multiples of the refusal vector to try, e.g. 1,2",
    )
    p.add_argument(
        "--refusal-tokens",
        default="",
        help="comma-separated token ids that begin a refusal (default: read off the base's answers)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=d.steer_max_new_tokens, help="answer length in the steering check"
    )
    p.add_argument(
        "--selection-prompts",
        type=int,
        default=d.selection_prompts,
        help="harmful and harmless prompts each for choosing the refusal direction over (layer, position); 0 skips",
    )
    p.add_argument(
        "--no-components",
        action="store_true",
        help="skip the attention-vs-MLP attribution and the component map",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--out", required=True, help="run folder")
    common.add_reasoning_option(p)
    common.add_at_answer_option(p)
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args) -> None:
    """Per-layer measures, causal checks and the ranking of the pair; writes the layer map, the component
    map (unless ``--no-components``) and figures."""
    from dataclasses import replace

    from ..analyze import AnalysisConfig, AnalysisPrompts, analyze, layer_table
    from ..core.prompts import parse_spec
    from ..core.traces import answer_format, check_reasoning_chat
    from ..report.figures import analysis_figures, write_figures

    check_output(args.out, "analyze")
    common.check_device(args)
    chat = common.chat(args)
    if args.at_answer:
        check_reasoning_chat(chat, "--at-answer")
    given = {
        name: parse_spec(spec, label)
        for name, spec, label in (("harmful", args.harmful, 1), ("harmless", args.harmless, 0), ("task", args.task, 0))
        if spec
    }
    prompts = replace(AnalysisPrompts(), **given)
    config = AnalysisConfig(
        k=args.k,
        causal_prompts=args.causal_prompts,
        batch_size=args.batch_size,
        steer_scales=common.floats(args.steer_scales, "--steer-scales"),
        steer_max_new_tokens=args.max_new_tokens,
        refusal_tokens=common.ints(args.refusal_tokens, "--refusal-tokens") or None,
        components=not args.no_components,
        selection_prompts=args.selection_prompts,
    )
    pair = common.load_pair(args)
    if args.at_answer:
        chat = answer_format(pair.finetuned, prompts.harmful, chat)
    with output_folder(args.out, "analyze") as out:
        result = analyze(pair, out, config, prompts, chat=chat)
        write_figures(analysis_figures(result), out / "figures")
        common.write_config(args, out, pair)
    out = Path(args.out)
    print(layer_table(result))
    print(f"selected layers: {result.layer_map.selected_layers}  ->  {out / 'layer_map.json'}")
    if result.component_map is not None:
        print(f"selected components: {result.component_map.modules}  ->  {out / 'component_map.json'}")
