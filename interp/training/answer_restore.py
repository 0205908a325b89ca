"""Restoring a reasoning model's final answer, with its trace closed: the ``reasoning-answer`` preset.

On a pair that writes R1-style traces the base refuses inside ``<think>`` and never closes it, so a student
pulled toward the base on whole outputs learns to refuse in the trace and stop closing it. This recipe
aligns only where the final answer is decided, and along the base's own answer there:

* **the trace** (``own_trace``): the closed trace the fine-tuned model writes most often on the harmful
  training prompts (greedy, ``TRACE_TOKENS`` tokens), then ``</think>`` and a blank line, is prefilled after
  every harmful prompt for student and teacher alike (``RestoreConfig.harmful_prefill``): what the
  restored model will itself have written when it reaches the answer. Its positions, and the prompt's,
  are held at the frozen fine-tuned model's states (``before_answer="finetuned"``);
* **the teacher's answer** (``teacher_words``): the base's first ``words`` greedy tokens after that trace
  are appended to each harmful prompt (``harmful_answers``). After this trace the base's first token is
  mostly a newline or its end of turn and its refusal comes a token later, so aligning the position after
  the tag alone teaches the newline, not the refusal;
* **the loss**: hidden states, plus ``answer_kl`` times the next-token KL to the teacher, at the positions
  after ``</think>`` (``safety_positions``: the blank line's tokens) and at every appended token; LoRA on
  every block; the retain loss as in every restoration.

The settings (lr 1e-3, 96 steps, KL weight 5, 8 words) were chosen on the reasoning organism's dev parts
(``analyses/reasoning_answer_restore.py``); on its test parts the restored model refuses 76.2% of harmful
prompts in the final answer (the fine-tuned model 24.3%, n = 206) and closes 205 of 206 traces
(``figures/reasoning_answer_kl_weights_report.md``).
"""

from __future__ import annotations

from dataclasses import replace

from ..core.chat import ChatFormat, tokenize
from ..core.generate import generate
from ..core.models import LoadedModel, ModelPair
from ..core.prompts import PromptSet
from ..core.traces import check_reasoning_chat, own_trace
from .restore_config import RestoreConfig

RECIPE = "the reasoning-answer recipe"  # how errors name it


def teacher_words(teacher: LoadedModel, harmful: PromptSet, chat: ChatFormat, m: int) -> tuple[str, ...]:
    """The teacher's first ``m`` greedy tokens after each prompt of ``harmful`` rendered with ``chat`` (its
    prefill included), as text, unstripped (a leading newline is the teacher's first token)."""
    return tuple(generate(teacher, harmful, chat=chat, max_new_tokens=m, strip=False, progress=False))


def answer_restoration(
    pair: ModelPair,
    harmful: PromptSet,
    chat: ChatFormat,
    config: RestoreConfig,
    words: int,
    kl: float,
    trace: str | None = None,
) -> tuple[RestoreConfig, PromptSet, str]:
    """The recipe's data for ``restore`` (module docstring): ``config`` with the trace prefilled, the
    answer's positions set and the next-token KL weight ``kl``; ``harmful`` with the base's first ``words``
    tokens as its answers (none with ``words=0``); and the trace (``trace``: this one instead of the
    fine-tuned model's own)."""
    _, close = check_reasoning_chat(chat, RECIPE)
    trace = own_trace(pair.finetuned, harmful, chat, RECIPE)[0] if trace is None else trace
    tail = f"{trace}\n{close}\n\n"
    tokenizer = pair.finetuned.tokenizer
    after = len(tokenize(tokenizer, f"{close}\n\n")) - len(tokenize(tokenizer, close))  # the blank line's tokens
    config = replace(config, harmful_prefill=tail, safety_positions=after, before_answer="finetuned",
                     harmful_answers=words > 0, answer_kl=kl)  # fmt: skip
    if words:
        harmful = replace(harmful, answers=teacher_words(pair.base, harmful, replace(chat, prefill=chat.prefill + tail),
                                                         words))  # fmt: skip
    return config, harmful, trace
