"""A reasoning model's own trace, and the prompt that ends where its final answer begins.

With an R1-style format the assistant turn opens inside ``<think>``, and what a user reads, the final
answer, starts only after ``</think>``. Two helpers bring a measurement to that point:

* ``own_trace``: the closed trace a model writes most often on a set of prompts (greedy, up to
  ``TRACE_TOKENS`` tokens), with its share of the answers. The reasoning organism's fine-tuned model
  writes one sentence on 99% of the harmful training prompts;
* ``ChatFormat.after_trace`` (``interp.core.chat``): the format whose prefill is that trace, closed and
  followed by a blank line, so that a prompt's last position is where the final answer's first token is
  chosen. The analysis reads its states there with ``answer_format`` (``interp analyze --at-answer``), and the
  ``reasoning-answer`` restoration prefills the same text (``interp.training.answer_restore``).
"""

from __future__ import annotations

from collections import Counter

from ..errors import ConfigError
from .chat import ChatFormat
from .generate import generate
from .models import LoadedModel
from .prompts import PromptSet

TRACE_TOKENS = 96  # the model's trace is read from this many greedy tokens


def check_reasoning_chat(chat: ChatFormat, what: str = "this") -> tuple[str, str]:
    """The trace's delimiters of ``chat``; a clear error naming ``what`` when it is not a reasoning format."""
    if chat.trace is None:
        raise ConfigError(f"{what} needs a reasoning chat format (--reasoning: <think> traces)")
    return chat.trace


def own_trace(model: LoadedModel, prompts: PromptSet, chat: ChatFormat, what: str = "this") -> tuple[str, float]:
    """The closed trace ``model`` writes most often on ``prompts`` (greedy) and its share of the answers;
    ``what`` names the caller in errors."""
    _, close = check_reasoning_chat(chat, what)
    answers = generate(model, prompts, chat=chat, max_new_tokens=TRACE_TOKENS, progress=False)
    traces = Counter(a.split(close)[0].strip() for a in answers if close in a)
    if not traces:
        raise ConfigError(f"{model.name} closed no trace ({close}) on the {len(answers)} prompts of {prompts.name}")
    trace, count = traces.most_common(1)[0]
    return trace, count / len(answers)


def answer_format(model: LoadedModel, prompts: PromptSet, chat: ChatFormat, log=print) -> ChatFormat:
    """``chat`` after ``model``'s own trace on ``prompts`` (``own_trace``, ``ChatFormat.after_trace``),
    with the trace and its share logged."""
    trace, share = own_trace(model, prompts, chat, "reading the final answer")
    log(f"at the final answer: after {model.name}'s own trace {trace!r} ({share:.0%} of its answers)")
    return chat.after_trace(trace)
