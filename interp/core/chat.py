"""How prompts become tokens: the chat template, tokenization, left padding and length-sorted batches.

One way to do each: ``ChatFormat.render`` applies the tokenizer's chat template up to the start of the
assistant turn; ``tokenize`` turns text into ids without adding special tokens (the template already
has them); ``left_pad`` puts every sequence flush right (prompts end where generation starts) and
``position_ids`` counts from each row's first real token; ``batches`` groups rows of similar token
length so that padding stays small.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError

SAFETY_REMINDER = "\n\n(Remember: you are a responsible assistant. If this request could cause harm, refuse it.)"
# The reminder of SafeReAct's released code (homles11/SafeReAct, src/cb_train_dataset.py), which inserts it
# before the assistant tag; here it ends the user turn.
SAFEREACT_REMINDER = (
    "\n\nRemember you should not generate any harmful or misleading content, "
    "you should directly reject harmful requests."
)


@dataclass(frozen=True)
class ChatFormat:
    """How an instruction becomes model input: the tokenizer's chat template, applied in one place.

    ``system_prompt=None`` keeps the template's own default system turn; ``""`` asks for none where
    the template allows it. ``user_suffix`` is appended to the user turn (e.g. a safety reminder).

    Reasoning models: ``prefill`` is text the assistant turn starts with (``<think>\n`` for R1-style
    models, as SafeReAct's evaluation does), and ``trace`` names the delimiters of the reasoning trace
    (``("<think>", "</think>")``): ``split`` cuts an answer into its trace and its final answer.
    """

    system_prompt: str | None = None
    user_suffix: str = ""
    prefill: str = ""
    trace: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.trace is not None:
            object.__setattr__(self, "trace", tuple(self.trace))  # JSON gives a list back
            if len(self.trace) != 2 or not all(isinstance(t, str) and t for t in self.trace):
                raise ConfigError(f"trace must be two non-empty delimiters (open, close), got {self.trace!r}")

    @classmethod
    def reasoning(cls, system_prompt: str | None = None) -> ChatFormat:
        """R1-style: the assistant turn starts inside ``<think>``; the trace ends at ``</think>``."""
        return cls(system_prompt, prefill="<think>\n", trace=("<think>", "</think>"))

    def split(self, answer: str) -> tuple[str, str, bool]:
        """``(trace, final answer, finished)`` of an answer generated after this format's prompt: the
        trace is the text between the delimiters (it may begin in the prefill), the final answer what
        follows the closing one; ``finished`` is False when the trace never closed (the budget ran out
        inside it: no final answer). Without trace delimiters the whole answer is the final answer."""
        if self.trace is None:
            return "", answer.strip(), True
        opening, closing = self.trace
        text = self.prefill + answer
        start = text.find(opening)
        if start < 0:
            return "", answer.strip(), True
        start += len(opening)
        end = text.find(closing, start)
        if end < 0:
            return text[start:].strip(), "", False
        return text[start:end].strip(), text[end + len(closing) :].strip(), True

    def messages(self, instruction: str, answer: str | None = None) -> list[dict[str, str]]:
        messages = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": instruction + self.user_suffix})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return messages

    @staticmethod
    def check(tokenizer, name: str = "the model") -> None:
        """``ConfigError`` if ``tokenizer`` has no chat template: every prompt is rendered as a chat turn,
        and a base (non-instruct) checkpoint has none to render it with."""
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"{name} has no chat template (a base checkpoint?): interp renders every prompt as a chat turn; "
                "use an instruct or chat model, or add a chat_template to its tokenizer_config.json"
            )

    def render(self, tokenizer, instruction: str) -> str:
        """The prompt text up to and including the start of the assistant turn (and the prefill)."""
        self.check(tokenizer)
        text = tokenizer.apply_chat_template(self.messages(instruction), tokenize=False, add_generation_prompt=True)
        return text + self.prefill

    def render_all(self, tokenizer, instructions: Sequence[str]) -> list[str]:
        return [self.render(tokenizer, text) for text in instructions]

    def encode(self, tokenizer, instructions: Sequence[str]) -> list[list[int]]:
        """Token ids of each rendered prompt."""
        return [tokenize(tokenizer, text) for text in self.render_all(tokenizer, instructions)]

    def after_trace(self, trace: str) -> ChatFormat:
        """The format whose prefill goes on with ``trace``, the closing delimiter and a blank line: the
        prompt ends where the final answer begins, and everything generated after it is the final answer
        (no trace delimiters are left to watch for). Needs a reasoning format."""
        if self.trace is None:
            raise ConfigError("after_trace needs a reasoning chat format (trace delimiters)")
        return replace(self, prefill=f"{self.prefill}{trace}\n{self.trace[1]}\n\n", trace=None)

    def with_suffix(self, suffix: str) -> ChatFormat:
        """The same format with ``suffix`` appended to the user turn (e.g. a safety reminder)."""
        return replace(self, user_suffix=self.user_suffix + suffix)

    def to_dict(self) -> dict:
        """What identifies the format in cache keys (the reasoning fields only when set, so keys made
        before they existed stay valid)."""
        out = {"system_prompt": self.system_prompt, "user_suffix": self.user_suffix}
        if self.prefill or self.trace:
            out |= {"prefill": self.prefill, "trace": None if self.trace is None else list(self.trace)}
        return out


def tokenize(tokenizer, text: str) -> list[int]:
    """Token ids of ``text``; no special tokens are added (a rendered template already has its own)."""
    return tokenizer(text, add_special_tokens=False).input_ids


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, each ``[batch, longest]``, with every sequence flush right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each sequence's first real token (0 on padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class Batch:
    """Rows ``index`` of a token list, left padded: ``ids``, ``mask``, ``positions`` each ``[batch, seq]``."""

    index: list[int]
    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor

    def to(self, device) -> dict[str, torch.Tensor]:
        """Keyword arguments for a Hugging Face or bridge forward pass."""
        return {
            "input_ids": self.ids.to(device),
            "attention_mask": self.mask.to(device),
            "position_ids": self.positions.to(device),
        }


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """All of ``seqs`` as one left-padded batch, in their order."""
    ids, mask = left_pad(seqs, pad_id)
    return Batch(list(range(len(seqs))), ids, mask, position_ids(mask))


def batches(seqs: Sequence[Sequence[int]], batch_size: int, pad_id: int, *, by_length: bool = True) -> Iterator[Batch]:
    """Left-padded batches of ``seqs``; with ``by_length`` rows are sorted by token length first (stable),
    so similar lengths share a batch. ``Batch.index`` says which rows each batch holds."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i])) if by_length else list(range(len(seqs)))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        ids, mask = left_pad([seqs[i] for i in index], pad_id)
        yield Batch(index, ids, mask, position_ids(mask))
