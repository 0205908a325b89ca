"""The generation engine, the evaluation table and its statistics on tiny models: the engine equals Hugging
Face's own greedy generation, early stopping keeps every judgment, answers are cached across stages, the
KL column equals a direct computation, and intervals, McNemar and target verdicts match hand-computed values."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from conftest import QUICK_EVAL as QUICK
from conftest import perturbed, tiny_suite

import interp.core.generate as engine
import interp.core.judge as judge
from interp.core.bridge import decoder_layers, intervene
from interp.core.chat import ChatFormat
from interp.core.generate import Request, behaviour, generate, generate_many
from interp.core.models import load_model
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.errors import ConfigError
from interp.evaluation.kl import first_changed_layer, kl_to_reference
from interp.evaluation.stats import (
    discordant,
    mcnemar_exact,
    paired_bootstrap,
    paired_p_value,
    rate_interval,
    wilson_interval,
)
from interp.evaluation.suite import Candidate, EvalRow
from interp.evaluation.table import evaluate_models
from interp.evaluation.targets import check_targets, paired_tests
from interp.io.cache import cache_root
from interp.report.study_tables import paired_table, results_table, targets_table


@pytest.fixture()
def pair(saved_pair):
    return saved_pair


def prompts(n: int = 12):
    return harmful_prompts("val").head(n // 2) + harmless_prompts("val").head(n - n // 2)


def hf_greedy(model, text: str, max_new_tokens: int, strip: bool = True) -> str:
    """Hugging Face's own ``generate``, one prompt at a time (no padding): the reference answers."""
    ids = torch.tensor([ChatFormat().encode(model.tokenizer, [text])[0]])
    with torch.no_grad():
        out = model.hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id,
            eos_token_id=model.tokenizer.eos_token_id,
        )
    text = model.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return text.strip() if strip else text


# ----------------------------------------------------------------------------- the engine
def test_the_engine_equals_hugging_face_generate_on_each_prompt_alone(tiny_model_dir):
    model = load_model(tiny_model_dir)
    batch = prompts(10)
    got = generate(model, batch, max_new_tokens=7, batch_size=4, cache=False, progress=False)
    assert got == [hf_greedy(model, text, 7) for text in batch.instructions]


def test_unstripped_answers_keep_their_whitespace_and_skip_the_cache(tiny_model_dir):
    """``strip=False``: Hugging Face's own decode as it is, and never the stripped answers the cache holds."""
    model = load_model(tiny_model_dir)
    (newline,) = model.tokenizer.encode("\n", add_special_tokens=False)
    planted = torch.zeros(model.hf.config.vocab_size)
    planted[newline] = 1e4  # every greedy token is a newline
    model.hf.lm_head.register_forward_hook(lambda module, inputs, out: out + planted.to(out.dtype))
    batch = prompts(6)
    stripped = generate(model, batch, max_new_tokens=3, batch_size=4, progress=False)  # cached
    raw = generate(model, batch, max_new_tokens=3, batch_size=4, progress=False, strip=False)
    assert raw == [hf_greedy(model, text, 3, strip=False) for text in batch.instructions] == ["\n\n\n"] * 6
    assert stripped == [""] * 6


def test_pooled_and_per_set_generation_give_equal_answers(tiny_llama):
    model = load_model(tiny_llama)
    a, b = harmful_prompts("val").head(5), arithmetic_prompts("val", n=20).head(4)
    pooled = generate_many(model, [Request(a, 6), Request(b, 9)], batch_size=3, cache=False, progress=False)
    alone = [generate(model, p, max_new_tokens=n, cache=False, progress=False) for p, n in ((a, 6), (b, 9))]
    assert [r.answers for r in pooled] == alone
    assert all(len(r.answers) == n for r, n in zip(pooled, (5, 4)))


def test_early_stopping_keeps_every_judgment(tiny_llama, monkeypatch):
    """A judge phrase the tiny model emits early in some answers and not in others: stopping at it
    shortens those answers and changes no judgment."""
    model = load_model(tiny_llama)
    batch = prompts(16)
    full = generate(model, batch, max_new_tokens=12, cache=False, progress=False)
    phrase = next(
        (
            answer[i : i + 3]
            for answer in full
            for i in range(len(answer) - 3)
            if answer[i : i + 3].strip() and 0 < sum(answer[i : i + 3] in a[:20] for a in full) < len(full)
        ),
        None,
    )
    assert phrase is not None, "the tiny model's answers share no 3-character phrase to plant"
    monkeypatch.setattr(judge, "_DECLINE", re.compile("(?P<decline>" + re.escape(phrase.lower()) + ")"))
    stopped = generate(model, batch, max_new_tokens=12, stop_at_refusal=True, cache=False, progress=False)
    assert [judge.is_refusal(a) for a in stopped] == [judge.is_refusal(a) for a in full]
    assert any(len(s) < len(f) for s, f in zip(stopped, full))  # some rows really stopped early
    assert all(f.startswith(s) for s, f in zip(stopped, full))


def test_first_step_scores_match_a_prefill(tiny_llama):
    model = load_model(tiny_llama)
    batch = harmful_prompts("val").head(5)
    tokens = (5, 9)
    got = generate_many(model, [Request(batch, 3, score_tokens=tokens)], cache=False, progress=False)[0].scores
    expected = engine.refusal_scores(model, batch, tokens)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError):
        Request(batch, 3, score_tokens=())


def test_cached_answers_are_reused_across_stages(pair, monkeypatch):
    """The organism's measurement, the KL reference answers and the table's rows share one answer cache:
    no answer is generated twice, and a table whose rows were deleted is rebuilt from cached answers."""
    decoded = []
    real = engine._decode_batch
    monkeypatch.setattr(engine, "_decode_batch", lambda model, rows, *a: decoded.extend(rows) or real(model, rows, *a))
    suite = tiny_suite()
    behaviour(pair.finetuned, suite.harmless, max_new_tokens=QUICK.max_new_tokens, progress=False)  # as the organism
    assert len(decoded) == len(suite.harmless)

    def table():
        rows = evaluate_models(
            [Candidate("base", pair.base, plan="base"), Candidate("finetuned", pair.finetuned, plan="finetuned")],
            suite,
            refusal_tokens=[5],
            reference=pair.finetuned,
            config=QUICK,
            progress=False,
            log=lambda _: None,
        )
        return [{name: getattr(r, name) for name in EvalRow.MEASURED} for r in rows]

    decoded.clear()
    first = table()
    new_for_ft = len(suite.harmful) + len(suite.xstest) + len(suite.task)  # not the harmless set again
    assert len(decoded) == sum(suite.sizes().values()) + new_for_ft
    decoded.clear()
    assert table() == first and not decoded  # rows from the row cache
    shutil.rmtree(cache_root() / "evals")
    assert table() == first and not decoded  # rows rebuilt from cached answers
    pair.base = perturbed(pair.base, seed=5)
    table()
    assert len(decoded) == sum(suite.sizes().values())  # only the changed model again


def test_an_intervention_without_a_key_is_never_cached(pair, monkeypatch):
    decoded = []
    real = engine._decode_batch
    monkeypatch.setattr(engine, "_decode_batch", lambda model, rows, *a: decoded.extend(rows) or real(model, rows, *a))
    hooked = Candidate("hooked", pair.finetuned, edits={1: lambda x: x})
    for _ in range(2):
        evaluate_models(
            [hooked], tiny_suite(), refusal_tokens=[5], reference=pair.finetuned, config=QUICK, progress=False
        )
    n = sum(tiny_suite().sizes().values())
    assert len(decoded) == len(tiny_suite().harmless) + 2 * n  # reference answers once, the hooked model twice


# ----------------------------------------------------------------------------- the KL column
def direct_kl(reference, model, prompts, answers, edits=None) -> float:
    """KL(reference || model) per scored token, one unpadded prompt at a time."""
    tok = reference.tokenizer
    total, count = 0.0, 0
    for text, answer in zip(prompts.instructions, answers):
        prompt_ids = ChatFormat().encode(tok, [text])[0]
        cont = tok(answer, add_special_tokens=False).input_ids
        ids = torch.tensor([prompt_ids + cont])
        with torch.no_grad(), intervene(model.hf, edits or {}):
            q = torch.log_softmax(model.hf(ids).logits[0], -1)[len(prompt_ids) - 1 : -1]
        with torch.no_grad():
            p = torch.log_softmax(reference.hf(ids).logits[0], -1)[len(prompt_ids) - 1 : -1]
        total += (p.exp() * (p - q)).sum().item()
        count += len(cont)
    return total / count


def test_kl_matches_a_direct_computation_and_is_zero_to_itself(pair):
    batch = harmless_prompts("val").head(3)
    answers = ["Sure thing", "No", ""]
    candidates = [Candidate("base", pair.base), Candidate("finetuned", pair.finetuned)]
    got = kl_to_reference(candidates, pair.finetuned, batch, answers, batch_size=2)
    expected = direct_kl(pair.finetuned, pair.base, batch, answers)
    assert got[0] == pytest.approx(expected, rel=1e-3, abs=1e-7)  # padding moves fp32 rounding only
    assert got[1] == 0.0  # the reference's own row: no forward pass


def test_kl_starts_at_the_first_changed_block(pair):
    """A candidate that differs from the reference from block 2 on (weights), or at block 1 (an edit),
    starts there from the reference's residual stream, and its KL equals the direct computation."""
    batch = harmless_prompts("val").head(4)
    answers = ["Sure thing", "No", "", "1 2 3"]
    changed = load_model(pair.finetuned.path)
    with torch.no_grad():
        decoder_layers(changed.hf)[2].mlp.down_proj.weight.mul_(1.5)
    changed = changed.with_hf(changed.hf)
    edits = {1: lambda x: x + 0.5}
    steered = Candidate("steered", pair.finetuned, edits=edits, edits_key="plus")
    assert first_changed_layer(Candidate("changed", changed), pair.finetuned) == 2
    assert first_changed_layer(steered, pair.finetuned) == 1
    assert first_changed_layer(Candidate("base", pair.base), pair.finetuned) == 0
    calls = {0: 0, 2: 0}
    for layer in calls:
        decoder_layers(changed.hf)[layer].register_forward_pre_hook(
            lambda *_, layer=layer: calls.__setitem__(layer, calls[layer] + 1)
        )
    got = kl_to_reference([Candidate("changed", changed), steered], pair.finetuned, batch, answers, batch_size=3)
    assert calls == {0: 1, 2: 3}  # block 0 ran for the shared prefix only; block 2 for it and both batches
    assert got[0] == pytest.approx(direct_kl(pair.finetuned, changed, batch, answers), rel=1e-3, abs=1e-7)
    assert got[1] == pytest.approx(direct_kl(pair.finetuned, pair.finetuned, batch, answers, edits), rel=1e-3, abs=1e-7)
    assert got[0] > 1e-5 and got[1] > 1e-5


# ----------------------------------------------------------------------------- statistics
def test_wilson_and_mcnemar_match_hand_computed_values():
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)  # 2 * P[Bin(10, 1/2) <= 1]
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert discordant([1, 1, 0, 0, 1], [1, 0, 1, 0, 0]) == (2, 1)
    with pytest.raises(ConfigError):
        wilson_interval(3, 2)
    with pytest.raises(ConfigError):
        discordant([1, 0], [1])


def test_the_clustered_interval_covers_a_rate_whose_samples_share_their_prompt():
    """Prompts differ in how often they are refused (p_i = 0.05 or 0.55, half each; rate 0.30) and each is
    sampled k = 5 times: the interval over shares of samples covers 0.30 about 95% of the time, where
    Wilson's over all n k samples, which takes them as independent, covers it far less often."""
    rng = np.random.default_rng(0)
    n, k, covered, naive = 100, 5, 0, 0
    for _ in range(400):
        p_i = rng.choice([0.05, 0.55], size=n)
        shares = rng.binomial(k, p_i) / k
        low, high = rate_interval(shares, k)
        covered += low <= 0.30 <= high
        low, high = wilson_interval(round(shares.sum() * k), n * k)
        naive += low <= 0.30 <= high
    assert covered / 400 >= 0.92 and naive / 400 < 0.90
    # every prompt's samples agree: Wilson over the prompts; independent samples: close to Wilson over samples
    assert rate_interval([1.0, 0.0, 1.0, 0.0], 5) == wilson_interval(2, 4)
    shares = rng.binomial(k, 0.3, size=400) / k
    wide = rate_interval(shares, k)
    assert wide == pytest.approx(wilson_interval(shares.sum() * k, 400 * k), abs=0.01)


def test_the_paired_p_value_is_mcnemar_on_zero_one_outcomes_and_a_sign_flip_test_on_shares():
    a, b = [1] * 8 + [0] * 12, [0] * 8 + [1] + [0] * 11
    assert paired_p_value(a, b) == mcnemar_exact(*discordant(a, b)) == pytest.approx(mcnemar_exact(8, 1))
    rng = np.random.default_rng(1)
    shares = rng.integers(0, 6, size=60) / 5
    assert paired_p_value(shares, shares) == 1.0
    assert paired_p_value(np.minimum(shares + 0.4, 1.0), shares) < 1e-3  # higher on every prompt
    noise = rng.choice([-0.2, 0.2], size=60)
    assert paired_p_value(np.clip(shares + noise, 0, 1), shares) > 0.05


def test_paired_bootstrap_covers_the_difference_and_keeps_the_pairing():
    a = [1] * 60 + [0] * 40
    low, high = paired_bootstrap(a, a)
    assert low == high == 0.0  # identical outcomes: no uncertainty about their difference
    b = [1] * 50 + [0] * 50
    low, high = paired_bootstrap(a, b)
    assert 0.0 <= low < 0.10 < high <= 0.2  # a is b plus ten prompts: the difference is 0.10, never negative


def row(plan, harmful, harmless=(), task=(), params=0, seconds=0.0) -> EvalRow:
    """A row with per-prompt outcomes (1 = refused, or correct)."""
    outcomes = {"harmful": list(harmful), "harmless": list(harmless) or [0] * 20, "task": list(task) or [1] * 20}
    rate = {k: sum(v) / len(v) for k, v in outcomes.items()}
    return EvalRow(
        name=f"row {plan}",
        plan=plan,
        harmful_refusal=rate["harmful"],
        refusal_score=0.0,
        harmless_refusal=rate["harmless"],
        xstest_refusal=None,
        task_accuracy=rate["task"],
        kl=0.0,
        harmful_answer_kinds={},
        examples={},
        n={k: len(v) for k, v in outcomes.items()},
        outcomes=outcomes,
        trainable_params=params,
        train_seconds=seconds,
    )


def test_targets_are_met_missed_or_not_distinguishable():
    n = 200
    base = row("base", [1] * 180 + [0] * 20)  # 90%
    rows = [
        base,
        row("finetuned", [1] * 40 + [0] * 160, task=[1] * 16 + [0] * 4),
        row("ranked", [1] * 178 + [0] * 22, task=[1] * 15 + [0] * 5, params=100, seconds=100),  # 89%
        row("all_layers", [1] * 180 + [0] * 20, params=1000, seconds=200),
        row("random_k", [1] * 100 + [0] * 100),
        row("bottom_k", [1] * 176 + [0] * 24),  # 88%: two prompts fewer than ranked
    ]
    verdicts = {t.target: t.verdict for t in check_targets(rows)}
    assert verdicts["restored harmful_refusal >= 90% of base"] == "met"  # 89% vs 81%: far above
    assert verdicts["restored task accuracy >= fine-tuned - 5 pts"] == "not distinguishable"  # 75% vs 80% - 5
    assert verdicts["ranked refusal > random_k"] == "met"
    assert verdicts["ranked refusal > bottom_k"] == "not distinguishable"  # the interval straddles 0
    assert verdicts["ranked / all-layer trainable params <= 1/3"] == "met"
    # a clear miss: the restored model refuses no more than the fine-tuned one
    rows[2] = row("ranked", [1] * 40 + [0] * 160)
    assert {t.target: t.verdict for t in check_targets(rows)}["restored harmful_refusal >= 90% of base"] == "missed"
    assert check_targets(rows[:2]) == []
    assert len(rows[0].outcomes["harmful"]) == n


def test_paired_tests_and_tables_show_intervals():
    rows = [row("base", [1] * 15 + [0] * 5), row("ranked", [1] * 12 + [0] * 8), row("random_k", [1] * 5 + [0] * 15)]
    tests = paired_tests(rows)
    random_vs_ranked = next(t for t in tests if t.model == "row random_k" and t.against == "row ranked")
    harmful = [t for t in tests if t.column == "harmful_refusal"]
    assert len(harmful) == 4  # base and random-k against ranked; ranked and random-k against base
    random_vs_ranked = next(t for t in harmful if t.model == "row random_k" and t.against == "row ranked")
    assert (random_vs_ranked.only_model, random_vs_ranked.only_against) == (0, 7)
    assert random_vs_ranked.p_value == pytest.approx(mcnemar_exact(0, 7))
    assert random_vs_ranked.difference == pytest.approx(-0.35)
    table = results_table(rows)
    assert "60.0% [38.7, 78.1%]" in table  # 12 of 20 with its Wilson interval
    assert "p=" in paired_table(tests) and "verdict" in targets_table(check_targets(rows))
