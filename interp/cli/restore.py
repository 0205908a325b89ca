"""``interp restore``: put safety back where the layer map points.

LoRA on the fine-tuned model's selected layers, trained so its hidden states on harmful prompts match a safe
teacher's, with a retain loss on everything else; ``--preset safereact`` is the released recipe (every layer).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..io.atomic import check_output, output_folder
from . import common


def restore_parser(sub) -> None:
    p = sub.add_parser(
        "restore",
        help="LoRA on the layer map's layers, pulling harmful prompts back to a safe teacher",
        description="Train LoRA on the fine-tuned model's selected layers (from layer_map.json) so "
        "its hidden states on harmful prompts match the teacher's at the alignment "
        "layers, with a retain loss on everything else. Writes the adapter (peft "
        "format) and a merged Hugging Face folder.",
    )
    common.add_pair_options(p)
    p.add_argument(
        "--layer-map",
        default=None,
        help="layer_map.json written by `interp analyze` (optional with --preset safereact: every layer)",
    )
    p.add_argument("--harmful", default="builtin:harmful:train", help="harmful prompts to restore refusal on")
    p.add_argument(
        "--retain",
        default="builtin:harmless:train,builtin:general:train,builtin:arithmetic:train",
        help="comma-separated prompt sets whose representations must stay (answers are used if present)",
    )
    p.add_argument("--no-merged", action="store_true", help="write only the adapter")
    p.add_argument("--out", required=True, help="folder for adapter/, restored/ and restore_stats.json")
    p.add_argument(
        "--preset",
        choices=["safereact", "reasoning-answer"],
        default=None,
        help="a named recipe: safereact = the released SafeReAct recipe (LoRA r16 on every layer, the reminder "
        "teacher, 400 steps, lr 2e-5, batch 16; README); reasoning-answer = a reasoning model's final answer "
        "restored with its trace closed (with --reasoning; LoRA on every layer, the fine-tuned model's own trace "
        "prefilled, the base's first 8 answer tokens aligned; docs/guide/gpu-and-scaling.md); the flags below "
        "override their settings",
    )
    common.add_restore_options(p)
    common.add_reasoning_option(p)
    p.set_defaults(func=cmd_restore)


def cmd_restore(args) -> None:
    """LoRA on the layer map's layers of the fine-tuned model; writes the adapter and a merged folder."""
    from ..core.prompts import parse_spec, without_duplicates
    from ..core.traces import check_reasoning_chat
    from ..io.atomic import atomic_write_json
    from ..measures.layer_map import LayerMap, manual_layer_map
    from ..training.answer_restore import RECIPE, answer_restoration
    from ..training.lora import save_adapter, save_merged
    from ..training.restore import restore
    from ..training.restore_config import PRESETS

    check_output(args.out, "restore")
    common.check_device(args)
    if args.layer_map is None and not args.preset:
        raise ConfigError("--layer-map is required (a --preset that puts LoRA on every layer can do without)")
    preset = PRESETS[args.preset] if args.preset else None
    if preset is not None and preset.answer_words:
        check_reasoning_chat(common.chat(args), RECIPE)
    layer_map = LayerMap.load(args.layer_map) if args.layer_map else None
    config = common.restore_config(args)
    harmful, retain = (
        without_duplicates(parse_spec(spec, label)) for spec, label in ((args.harmful, 1), (args.retain, 0))
    )
    pair = common.load_pair(args)
    layer_map = layer_map or manual_layer_map(pair.base, pair.finetuned, range(pair.n_layers))
    layers, alignment = preset.placement(layer_map) if preset else (None, None)
    if preset is not None and preset.answer_words:
        config, harmful, trace = answer_restoration(pair, harmful, common.chat(args), config, preset.answer_words,
                                                    preset.answer_kl)  # fmt: skip
        print(f"the trace prefilled after each harmful prompt (the fine-tuned model's own): {trace!r}")
    result = restore(
        pair.finetuned,
        layer_map,
        harmful,
        retain,
        config,
        base=pair.base if config.teacher == "base" else None,
        layers=layers,
        alignment=alignment,
        chat=common.chat(args),
    )
    with output_folder(args.out, "restore") as out:
        save_adapter(result.peft_model, out / "adapter", trained_on=pair.finetuned.fingerprint)
        atomic_write_json(out / "restore_stats.json", result.stats.to_dict())
        common.write_config(args, out, pair)
        if not args.no_merged:
            save_merged(result.peft_model, pair.finetuned.tokenizer, out / "restored")
    out = Path(args.out)
    stats = result.stats
    print(
        f"layers {stats.layers}, {stats.trainable_params:,} trainable params, {stats.seconds:.0f}s; "
        f"safety loss {stats.history[0]['safety']:.3f} -> {stats.history[-1]['safety']:.3f}"
    )
    print(f"adapter: {out / 'adapter'}" + ("" if args.no_merged else f"\nmerged:  {out / 'restored'}"))
