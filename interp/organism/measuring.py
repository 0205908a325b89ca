"""The organism's measured behaviour (``measure``): refusal of harmful and harmless prompts, the kinds of
its answers to harmful ones and task accuracy, as each model's manifest records it."""

from __future__ import annotations

from ..core.chat import ChatFormat
from ..core.generate import Request, generate_many
from ..core.judge import Behaviour
from ..core.judges import SubstringJudge
from ..core.models import LoadedModel
from ..core.prompts import PromptSet
from ..evaluation.table import judge_parts
from .recipe import EvalSets


def measure(
    model: LoadedModel, sets: dict[str, PromptSet], ev: EvalSets, progress: bool = True, chat: ChatFormat = ChatFormat()
) -> dict:
    """Harmful and harmless refusal, answer kinds on harmful prompts, and task accuracy. With a
    reasoning format the answer kinds are those of the final answers, and ``parts`` gives, per set, the
    refusal rate in the trace and in the final answer and the share of traces that closed."""
    stop = chat.trace is None  # a refusal phrase inside a trace decides nothing
    requests = [
        Request(sets["harmful"], ev.max_new_tokens, stop_at_refusal=stop),
        Request(sets["harmless"], ev.max_new_tokens, stop_at_refusal=stop),
        Request(sets["arithmetic"], ev.task_max_new_tokens),
    ]
    answers = generate_many(model, requests, chat=chat, progress=progress)  # pooled; cached for the study
    harmful, harmless, task = (Behaviour(r.prompts, a.answers) for r, a in zip(requests, answers))
    kinds = harmful
    metrics = {}
    if chat.trace is not None:
        parts = {}
        for name, judged in (("harmful", harmful), ("harmless", harmless)):
            decided = judge_parts(SubstringJudge(), judged.prompts, judged.answers, chat)
            rates = {key: round(sum(v) / len(v), 4) for key, v in decided.items()}
            parts[name] = {
                "trace_refusal": rates["trace"],
                "answer_refusal": rates["answer"],
                "closed": rates["finished"],
            }
        kinds = Behaviour(harmful.prompts, [chat.split(answer)[1] for answer in harmful.answers])
        metrics["parts"] = parts
    return {
        "harmful_refusal": round(harmful.refusal_rate, 4),
        "harmless_refusal": round(harmless.refusal_rate, 4),
        "task_accuracy": round(task.accuracy or 0.0, 4),
        "harmful_answer_kinds": {k: round(v, 4) for k, v in kinds.kind_shares.items()},
        "examples": {
            "harmful": _examples_by_kind(harmful),
            "harmless": harmless.examples(2),
            "arithmetic": task.examples(2),
        },
    } | metrics


def _examples_by_kind(result: Behaviour, per_kind: int = 2) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for prompt, answer, kind in zip(result.prompts.instructions, result.answers, result.kinds):
        if len(out.setdefault(kind, [])) < per_kind:
            out[kind].append({"prompt": prompt, "answer": answer})
    return out
