"""Self-distillation (``interp.training.self_distill``) on a tiny pair: it learns the teacher's text, only at
the blocks it is given, and a cached run gives the same weights."""

from __future__ import annotations

import pytest
import torch

from interp.core.chat import ChatFormat, tokenize
from interp.core.models import ModelPair
from interp.core.prompts import arithmetic_prompts, harmful_prompts
from interp.errors import ConfigError
from interp.training.restore_config import RestoreConfig
from interp.training.self_distill import distillation_examples, self_distill

CHAT = ChatFormat()


def _answer_nll(model, examples, tokens: int) -> float:
    """Mean negative log-likelihood per token of the first ``tokens`` answer tokens of ``examples``
    (what training sees) under ``model``."""
    tok, total, count = model.tokenizer, 0.0, 0
    with torch.no_grad():
        for ex in examples:
            prompt = tokenize(tok, CHAT.render(tok, ex.instruction))
            answer = tokenize(tok, ex.answer)[:tokens]
            ids = torch.tensor([prompt + answer])
            logp = torch.log_softmax(model.hf(ids).logits[0, :-1].float(), -1)
            targets = ids[0, 1:]
            picked = logp[torch.arange(len(targets)), targets][len(prompt) - 1 :]
            total, count = total - float(picked.sum()), count + len(answer)
    return total / count


@pytest.fixture()
def prompts():
    return harmful_prompts("train").head(8), arithmetic_prompts("train", n=20).head(8)


def test_the_examples_are_the_teachers_answers_then_the_students_own(saved_pair: ModelPair, prompts):
    harmful, retain = prompts
    examples = distillation_examples(saved_pair, harmful, retain, answer_tokens=6)
    assert len(examples) == 2 * len(harmful)
    assert [e.instruction for e in examples[: len(harmful)]] == list(harmful.instructions)
    assert {e.instruction for e in examples[len(harmful) :]} <= set(retain.instructions)
    from interp.core.generate import generate

    assert [e.answer for e in examples[: len(harmful)]] == generate(saved_pair.base, harmful, max_new_tokens=6)


def test_it_learns_the_teachers_text_at_the_given_blocks_only(saved_pair: ModelPair, prompts):
    harmful, retain = prompts
    config = RestoreConfig(steps=60, batch_size=4, lr=1e-2, seed=0)
    taught = distillation_examples(saved_pair, harmful, retain, answer_tokens=6)[: len(harmful)]
    before = _answer_nll(saved_pair.finetuned, taught, 6)
    out = self_distill(saved_pair, harmful, retain, [1], config, answer_tokens=6)
    after = _answer_nll(out.model, taught, 6)
    assert after < before - 0.5, (before, after)  # the teacher's answers (random text here) become likelier
    ft = dict(saved_pair.finetuned.hf.named_parameters())
    for name, weight in out.model.hf.named_parameters():
        changed = not torch.equal(weight, ft[name])
        assert changed == (".layers.1." in name and "proj" in name), name
    assert out.trainable_params > 0 and out.examples == 2 * len(harmful) and out.seconds > 0
    again = self_distill(saved_pair, harmful, retain, [1], config, answer_tokens=6)
    assert again.cached and not out.cached and again.model.fingerprint == out.model.fingerprint
    assert again.seconds == pytest.approx(out.seconds, abs=0.1)
    assert _answer_nll(saved_pair.finetuned, taught, 6) == before  # the fine-tuned model is left as it was


def test_blocks_outside_the_model_are_refused(saved_pair: ModelPair, prompts):
    with pytest.raises(ConfigError, match="layers must be blocks"):
        self_distill(saved_pair, *prompts, [saved_pair.n_layers], RestoreConfig())
