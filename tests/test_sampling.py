"""Sampled decoding in the generation engine: seeded per prompt, independent of the batch, nucleus
sampling at a vanishing top_p is greedy, and sampled answers are cached apart from greedy ones."""

from __future__ import annotations

import pytest

import interp.core.generate as engine
from interp.core.generate import Request, Sampling, generate, generate_many
from interp.core.models import load_model
from interp.core.prompts import harmful_prompts
from interp.errors import ConfigError


def sampled(model, prompts, sampling, batch_size=8, cache=False):
    request = Request(prompts, 12, sampling=sampling)
    return generate_many(model, [request], batch_size=batch_size, cache=cache, progress=False)[0].answers


def test_samples_are_seeded_per_prompt_and_do_not_depend_on_the_batch(tiny_llama):
    model = load_model(tiny_llama)
    prompts = harmful_prompts("val").head(6)
    hot = Sampling(temperature=1.0, seed=3)
    first = sampled(model, prompts, hot, batch_size=6)
    assert sampled(model, prompts, hot, batch_size=1) == first  # alone or in a batch: the same draws
    assert sampled(model, prompts, Sampling(temperature=1.0, seed=4)) != first
    greedy = generate(model, prompts, max_new_tokens=12, cache=False, progress=False)
    assert first != greedy
    assert sampled(model, prompts, Sampling(temperature=1.0, top_p=1e-9, seed=3)) == greedy  # only the top token


def test_sampled_answers_are_cached_apart_from_greedy_ones(tiny_llama, monkeypatch):
    model = load_model(tiny_llama)
    prompts = harmful_prompts("val").head(4)
    hot = Sampling(temperature=1.0, seed=7)
    first = sampled(model, prompts, hot, cache=True)
    decoded = []
    real = engine._decode_batch
    monkeypatch.setattr(engine, "_decode_batch", lambda m, rows, *a: decoded.extend(rows) or real(m, rows, *a))
    assert sampled(model, prompts, hot, cache=True) == first and not decoded  # from the cache
    greedy = generate(model, prompts, max_new_tokens=12, progress=False)
    assert len(decoded) == len(prompts)  # greedy answers were not served by the sampled entries
    assert greedy == generate(model, prompts, max_new_tokens=12, cache=False, progress=False)


def test_bad_sampling_settings_are_refused():
    for bad in ({"temperature": 0.0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ConfigError, match="temperature > 0 and top_p"):
            Sampling(**bad)


def test_the_evaluation_table_with_one_seeded_sample_per_prompt(saved_pair):
    from conftest import QUICK_EVAL, tiny_suite

    from interp.evaluation.suite import Candidate, EvalConfig
    from interp.evaluation.table import evaluate_models

    def table(sampling):
        config = EvalConfig(**{**QUICK_EVAL.__dict__, "max_new_tokens": 8, "sampling": sampling})
        rows = evaluate_models(
            [Candidate("base", saved_pair.base)],
            tiny_suite(),
            refusal_tokens=[5],
            reference=saved_pair.finetuned,
            config=config,
            progress=False,
            log=lambda _: None,
        )
        return rows[0]

    greedy, hot = table(None), table(Sampling(temperature=1.0, seed=2))
    assert hot.examples != greedy.examples  # sampled answers
    assert table(Sampling(temperature=1.0, seed=2)).examples == hot.examples  # the same seed again
    assert table(None).examples == greedy.examples  # greedy rows are not served by sampled ones
    assert hot.interval("harmful_refusal") is not None and len(hot.outcomes["harmful"]) == len(tiny_suite().harmful)
