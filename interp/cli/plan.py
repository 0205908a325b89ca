"""``interp plan``: what a study of a pair will need per stage (memory, passes, tokens, time), from the two
models' configs alone: no weights are read.
"""

from __future__ import annotations

from ..errors import ConfigError
from . import common


def plan_parser(sub) -> None:
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
