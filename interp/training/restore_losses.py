"""Restoration's losses (SafeReAct-style; ``interp.training.restore`` trains with them): LoRA on the layer
map's layers pulls harmful-prompt hidden states back toward a safe teacher, while a retain loss keeps
everything else where the fine-tuned model had it. The settings named here are ``RestoreConfig``'s
(``interp.training.restore_config``).

Losses, per training step ``t`` of ``T``:

* safety: on harmful prompts, the distance between the student's hidden states (the fine-tuned model
  with LoRA) and a frozen teacher's, at the map's alignment layers and every prompt position.
  Teachers: ``base`` (the aligned model, same prompt) or ``reminder`` (the fine-tuned model with the
  adapters off and a safety reminder appended to the user turn). With the reminder the teacher's
  prompt is longer: student position ``i`` is matched to the teacher's position ``i`` while inside the
  shared prefix (everything up to the end of the instruction), and to the same distance from the end
  afterwards (the closing template tokens); the reminder's own tokens have no partner.
  ``harmful_prefill`` is text both see after each harmful prompt (for a reasoning model, a closed trace:
  ``<think>`` ... ``</think>``), and ``safety_positions = n > 0`` restricts the safety loss to the last
  ``n`` positions of each harmful input (there, the opening of the final answer), leaving every earlier
  position, the trace's included, free (``before_answer = "free"``). With ``before_answer = "finetuned"``
  the earlier positions (after the shared system turn) are held instead: the safety loss is the mean
  distance to the teacher over the last ``n`` positions plus the mean distance to the frozen fine-tuned
  model over all the earlier ones (the system turn's included), at the same layers, so that the trace
  stays as the fine-tuned model writes it while the answer after it moves. ``answer_kl = w > 0`` adds to
  the safety loss ``w`` times the mean over those last ``n`` positions of ``KL(p_teacher || p_student)``,
  the next-token distributions (the final norm and unembedding of the last block's output): at the last
  position of a closed trace, the teacher's first answer token. With ``harmful_answers`` each harmful
  prompt's own answer text (``PromptSet.answers``: for example the teacher's greedy first words after the
  trace) follows the prefill for student and teacher alike, and the last ``n`` positions are counted
  before it: the safety loss (and the KL) then read the last ``n`` positions of the prefill and every
  answer token, so the teacher's next-token distributions are matched along its own answer.
* retain: on harmless and task prompts, the distance between the student's and the frozen fine-tuned
  model's hidden states at every layer and position.
* hidden states: the residual stream after each block (the decoder layer's output, before the final
  norm: the same tensor that capture and the causal checks read, ``interp.core.bridge``).
* distance: L2 norm of the difference per position (default) or ``1 - cosine``, averaged.
* schedule (linear, as in the paper and circuit breakers): ``w_safety(t) = 1 - t / (sT)`` and
  ``w_retain(t) = t / (sT)`` with span ``s = schedule_span`` (2 by default; 1.5 in SafeReAct's released
  code), the retain term scaled by ``retain_scale``; total loss
  ``loss_scale * (w_safety * safety + w_retain * retain)`` (``loss_scale`` is the released code's
  ``lorra_alpha``, 10 there, 1 by default).
"""

from __future__ import annotations

import torch


def schedule(step: int, steps: int, span: float = 2.0) -> tuple[float, float]:
    """``(w_safety, w_retain)`` at ``step`` of ``steps`` (module docstring)."""
    frac = step / (span * steps)
    return 1.0 - frac, frac


def distance_sum(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Sum over masked positions of the per-position distance; ``a``, ``b``: ``[batch, seq, d_model]``, in
    float32 whatever the models compute in."""
    a, b = a.float(), b.float()
    if kind == "l2":
        per_position = (a - b).norm(dim=-1)
    else:
        per_position = 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return (per_position * mask).sum()


def distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over masked positions of the per-position distance; ``a``, ``b``: ``[batch, seq, d_model]``."""
    return distance_sum(a, b, mask, kind) / mask.sum().clamp(min=1)


def next_token_kl_sum(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over (masked) positions of ``KL(softmax(teacher) || softmax(student))``; logits ``[..., d_vocab]``,
    ``mask`` ``[...]`` (1: counted)."""
    s_log, t_log = torch.log_softmax(student.float(), -1), torch.log_softmax(teacher.float(), -1)
    per_position = (t_log.exp() * (t_log - s_log)).sum(-1)
    return (per_position if mask is None else per_position * mask).sum()


def align_positions(student: list[int], teacher: list[int]) -> list[int]:
    """For each student token, the index of its partner in the teacher's (possibly longer) prompt."""
    shared = 0
    while shared < min(len(student), len(teacher)) and student[shared] == teacher[shared]:
        shared += 1
    shift = len(teacher) - len(student)
    return [i if i < shared else i + shift for i in range(len(student))]
