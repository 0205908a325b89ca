"""``interp evaluate`` and ``interp judge``: the evaluation table, and a run's kept answers judged again.

``evaluate`` writes evaluation.json by hand (the rows without their answers, the paired tests, the refusal
tokens and the set sizes): no result type holds that table yet.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..io.atomic import check_output, output_folder
from . import common


def evaluate_parser(sub) -> None:
    from ..evaluation.table import EvalConfig

    d = EvalConfig()
    p = sub.add_parser(
        "evaluate",
        help="the evaluation table: refusal, over-refusal, task accuracy, KL",
        description="Greedy answers judged for refusal on harmful, harmless and XSTest safe prompts, "
        "the logit refusal score, task accuracy and the KL to the fine-tuned model, for "
        "base, fine-tuned and any restored models or adapters. Defaults are held-out "
        "prompts: validation splits no stage trains on.",
    )
    common.add_pair_options(p)
    p.add_argument("--model", action="append", default=[], help="another model to evaluate (folder/hub id); repeatable")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        help="a peft adapter folder, applied to the fine-tuned model; repeatable",
    )
    p.add_argument(
        "--public",
        action="store_true",
        help="evaluate on the public sets that ship with interp instead of --harmful/--harmless/--xstest: "
        "all 299 harmful, harmless_val, XSTest safe and unsafe, Do-Not-Answer (the README's suite)",
    )
    p.add_argument("--n-harmless", type=common.positive, default=None, help="harmless prompts sampled with --public")
    p.add_argument("--harmful", default="builtin:harmful:val")
    p.add_argument("--harmless", default="builtin:harmless:val")
    p.add_argument("--xstest", default="", help="XSTest-like prompt file of safe prompts (optional)")
    p.add_argument(
        "--donotanswer", default="", help="e.g. public:donotanswer: refusal reported per category (optional)"
    )
    p.add_argument("--task", default="builtin:arithmetic:val", help="task prompts with reference answers")
    p.add_argument("--limit", type=common.positive, default=None, help="first N prompts of each set only")
    p.add_argument(
        "--refusal-tokens", default="", help="comma-separated token ids (default: read off the base's refusals)"
    )
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    common.add_judge_option(p)
    common.add_reasoning_option(p)
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy answers (default); > 0: seeded samples (--samples)"
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the samples (with --temperature)")
    p.add_argument(
        "--samples",
        type=common.positive,
        default=1,
        help="samples per prompt (with --temperature; seeds --sample-seed, +1, ...): rates over samples, "
        "intervals over prompts",
    )
    p.add_argument(
        "--trace-tokens",
        type=common.positive,
        default=None,
        help="with --reasoning: the trace's own budget; --max-new-tokens then counts after </think> "
        "(default: one budget for the whole answer)",
    )
    p.add_argument(
        "--judge-on",
        choices=("whole", "answer"),
        default="whole",
        help="with --reasoning: what the refusal rates read, the whole output (default) or the final answer (after"
        " </think> where the trace closed, the whole output where it never did); with answer the refusal score is"
        " read at the final answer's first token too",
    )
    p.add_argument(
        "--complete-answers",
        action="store_true",
        help="generate every answer to its token budget (default: stop once an answer is judged a refusal; "
        "complete answers can be judged again later: interp judge)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not reuse cached answers or rows")
    p.add_argument(
        "--out", required=True, help="folder for evaluation.json, evaluation.md and the answers (answers.json.gz)"
    )
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> None:
    """The evaluation table for base, fine-tuned and any restored models or adapters."""
    from ..core.generate import Sampling, find_refusal_tokens
    from ..core.judges import check_judge_spec
    from ..core.models import check_pair, fresh_copy, load_model
    from ..core.prompts import parse_spec
    from ..evaluation.suite import Candidate, EvalConfig, EvalSuite
    from ..evaluation.table import evaluate_models
    from ..report.evaluation import Evaluation
    from ..training.lora import apply_adapter, check_adapter

    check_output(args.out, "evaluate")
    common.check_device(args)
    for path in args.adapter:
        if not (Path(path) / "adapter_config.json").is_file():
            raise ConfigError(f"--adapter {path}: not a peft adapter folder (no adapter_config.json in it)")
    task = parse_spec(args.task, 0)
    if args.public:
        suite = EvalSuite.public(task=task, n_harmless=args.n_harmless)
    else:
        suite = EvalSuite(
            harmful=parse_spec(args.harmful, 1),
            harmless=parse_spec(args.harmless, 0),
            task=task,
            xstest=parse_spec(args.xstest, 0) if args.xstest else None,
            donotanswer=parse_spec(args.donotanswer, 1) if args.donotanswer else None,
        )
    if args.limit is not None:
        suite = suite.head(args.limit)
    tokens = common.ints(args.refusal_tokens, "--refusal-tokens")
    chat = common.chat(args)
    sampling = None if args.temperature == 0 else Sampling(args.temperature, args.top_p, args.sample_seed)
    if args.trace_tokens is not None and not args.reasoning:
        raise ConfigError("--trace-tokens needs --reasoning (a trace to budget)")
    if args.judge_on != "whole" and not args.reasoning:
        raise ConfigError("--judge-on answer needs --reasoning (a trace to split the answer from)")
    config = EvalConfig(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        judges=tuple(args.judge),
        sampling=sampling,
        samples=args.samples,
        trace_tokens=args.trace_tokens,
        judge_on=args.judge_on,
        score_on="answer" if args.judge_on == "answer" else "first",
        stop_at_refusal=not args.complete_answers,
    )
    for spec in config.judges:
        check_judge_spec(spec, resolve=True)
    pair = common.load_pair(args)
    candidates = [Candidate("base", pair.base, plan="base"), Candidate("finetuned", pair.finetuned, plan="finetuned")]
    for path in args.model:
        model = load_model(path, **common.model_options(args))
        check_pair(
            pair.finetuned, model, f"the fine-tuned model and {path}"
        )  # the same tokens and shapes, or the table cannot compare them
        candidates.append(Candidate(Path(path).name, model))
    for path in args.adapter:  # before any evaluation: each adapter belongs to this fine-tuned model
        check_adapter(pair.finetuned, path, warn=lambda line: None)
    for path in args.adapter:
        model = apply_adapter(fresh_copy(pair.finetuned), path, name=f"finetuned + {Path(path).name}")
        candidates.append(Candidate(model.name, model))
    if not tokens:  # the base model's own most common first refusal tokens, as in the analysis
        tokens = find_refusal_tokens(pair.base, suite.harmful, suite.harmless)
    rows = evaluate_models(
        candidates,
        suite,
        refusal_tokens=tokens,
        reference=pair.finetuned,
        config=config,
        chat=chat,
        cache=not args.no_cache,
    )
    result = Evaluation(rows, suite, list(tokens), config, reasoning=chat.trace is not None)
    with output_folder(args.out, "evaluate") as out:
        result.save(out)
        common.write_config(args, out, pair)
    print(result.report())


def judge_parser(sub) -> None:
    p = sub.add_parser(
        "judge",
        help="judge a run's kept answers again with any judge (no model of the study is loaded)",
        description="Read RUN/answers.json.gz (written by interp run and interp evaluate; complete answers "
        "with --full), judge every answer with --judge, and write the rates with 95%% intervals and the "
        "agreement with the substring judge into RUN/judged/.",
    )
    p.add_argument("run", help="a run folder (interp run --out, interp evaluate --out)")
    p.add_argument(
        "--judge",
        required=True,
        help="substring, classifier:PATH_OR_ID[@LABEL] (a refusal classifier) or guard:PATH_OR_ID (Llama Guard style)",
    )
    p.add_argument("--device", default="cpu", help="where a model judge runs")
    p.set_defaults(func=cmd_judge)


def cmd_judge(args) -> None:
    """Judge a run's kept answers again, with any judge, without loading the studied models."""
    from dataclasses import asdict

    from ..core.judges import check_judge_spec, parse_judge
    from ..evaluation.rejudge import RunAnswers, judged_file_stem, rejudge
    from ..io.atomic import add_to_output, atomic_write_json, atomic_write_text
    from ..report.judge_tables import rejudged_table

    check_judge_spec(args.judge, resolve=True)
    answers = RunAnswers.load(args.run)
    add_to_output(args.run, "run|evaluate", lambda folder: [])  # checked before the judge loads
    common.check_device(args)
    judge = parse_judge(args.judge, device=args.device)
    judged = rejudge(answers, judge)
    note = "" if answers.complete else " (answers stopped at the first refusal: a run without --full)"
    text = f"# {judge.name} on {args.run}{note}\n\n" + rejudged_table(judged) + "\n"
    stem = Path(args.run) / "judged" / judged_file_stem(judge.name)

    def write(folder: Path) -> list[Path]:
        return [
            atomic_write_json(stem.with_suffix(".json"), asdict(judged) | {"key": judge.key}),
            atomic_write_text(stem.with_suffix(".md"), text),
        ]

    add_to_output(args.run, "run|evaluate", write)
    print(text)
    print(f"written: {stem}.md, {stem}.json")
