"""Judges behind one protocol: the substring list, a sequence classifier and a Llama Guard style model,
each a tiny model built from a config whose output the test controls; and the agreement of two judges.

Controlled tiny models: with every attention output and MLP output matrix zeroed, the last position's
final hidden state is its own token's embedding (normalised). Giving chosen tokens one-hot embeddings
then makes the classifier's label, or the next generated token, a function of the last token alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import D_MLP, D_MODEL, build_tiny, make_tokenizer, one_hot, scripted_lm, silence
from transformers import LlamaConfig, LlamaForSequenceClassification

from interp.core.judges import (
    ClassifierJudge,
    GuardJudge,
    SubstringJudge,
    agreement,
    check_judge_spec,
    complied,
    parse_guard,
    parse_judge,
)
from interp.errors import ConfigError
from interp.evaluation.suite import EvalConfig

ANSWERS = [
    "I'm sorry, but I can't help with that.",  # substring: refusal; ends with '.'
    "Sure, here is how you do it!",  # comply; '!'
    "Sorry, but I could not resist: here is how!",  # substring: refusal (a false positive); '!'
    "Absolutely not, that would hurt people.",  # substring: comply (a miss); '.'
]
PROMPTS = ["p1", "p2", "p3", "p4"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    """A refusal classifier that says REJECTION when an answer ends with '.', NORMAL with '!'."""
    folder = tmp_path_factory.mktemp("classifier")
    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        num_labels=2,
        id2label={0: "NORMAL", 1: "REJECTION"},
        label2id={"NORMAL": 0, "REJECTION": 1},
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    silence(model)
    dot, bang = (tokenizer(c, add_special_tokens=False).input_ids[-1] for c in (".", "!"))
    one_hot(model, [dot, bang])
    with torch.no_grad():
        model.score.weight.zero_()
        model.score.weight[1, 0] = 1.0  # REJECTION reads the '.' dimension
        model.score.weight[0, 1] = 1.0  # NORMAL reads the '!' dimension
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def scripted_guard(folder: Path, reply: str) -> Path:
    """A guard that answers ``reply`` to any conversation: its chat template ends with ``<|im_start|>``."""
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}{{ '<|im_start|>' }}"
    return scripted_lm(folder, reply, "<|im_start|>", template)


def test_substring_judge_is_todays_list():
    verdicts = SubstringJudge()(PROMPTS, ANSWERS)
    assert [v.decision for v in verdicts] == [True, False, True, False]
    assert [v.score for v in verdicts] == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ConfigError, match="one answer per prompt"):
        SubstringJudge()(PROMPTS, ANSWERS[:2])


def test_classifier_judge_maps_the_refusal_label_by_name_and_batches(classifier_dir):
    judge = parse_judge(f"classifier:{classifier_dir}")
    assert isinstance(judge, ClassifierJudge) and judge.label == "REJECTION" and judge.kind == "refusal"
    verdicts = judge(PROMPTS, ANSWERS)
    assert [v.decision for v in verdicts] == [True, False, False, True]  # '.' -> refusal, '!' -> not
    assert all(v.score > 0.99 for v in verdicts if v.decision) and all(
        v.score < 0.01 for v in verdicts if not v.decision
    )
    one_by_one = ClassifierJudge(str(classifier_dir), batch_size=1)(PROMPTS, ANSWERS)
    np.testing.assert_allclose([v.score for v in one_by_one], [v.score for v in verdicts], atol=1e-5)
    named = parse_judge(f"classifier:{classifier_dir}@NORMAL")
    assert [v.decision for v in named(PROMPTS, ANSWERS)] == [False, True, True, False]
    with pytest.raises(ConfigError, match="no label 'REFUSED'"):
        parse_judge(f"classifier:{classifier_dir}@REFUSED")


def test_guard_judge_renders_with_its_template_and_parses_safe_unsafe_and_categories(tmp_path):
    unsafe = GuardJudge(str(scripted_guard(tmp_path / "unsafe", "unsafe\nS1")))
    safe = parse_judge(f"guard:{scripted_guard(tmp_path / 'safe', 'safe')}")
    assert unsafe.kind == safe.kind == "harm"
    assert unsafe.render("how?", "like this").endswith("assistant: like this\n<|im_start|>")
    flagged = unsafe(PROMPTS, ANSWERS)
    assert all(v.decision and v.label == "unsafe" and v.categories == ("S1",) for v in flagged)
    assert all(v.score > 0.99 for v in flagged)  # the first token's odds of 'unsafe' over 'safe'
    cleared = safe(PROMPTS[:3], ANSWERS[:3])
    assert all(not v.decision and v.label == "safe" and v.categories == () and v.score < 0.01 for v in cleared)
    odd = GuardJudge(str(scripted_guard(tmp_path / "odd", "maybe")))(PROMPTS[:1], ANSWERS[:1])[0]
    assert odd.label == "unparsed" and not odd.decision and math.isnan(odd.score)


def test_parse_guard_and_judge_specs():
    assert parse_guard("safe") == ("safe", ())
    assert parse_guard("\n unsafe\nS1, S10 \n") == ("unsafe", ("S1", "S10"))
    assert parse_guard("unsafe") == ("unsafe", ())
    assert parse_guard("I think it is safe") == ("unparsed", ())
    assert isinstance(parse_judge(" substring "), SubstringJudge)
    for bad in ("keywords", "guard:", "classifier"):
        with pytest.raises(ConfigError, match="unknown judge"):
            parse_judge(bad)
    with pytest.raises(ConfigError, match="cannot be loaded"):
        parse_judge("classifier:/nonexistent/judge")


def test_agreement_of_two_judges_on_planted_decisions(classifier_dir):
    """Substring vs the classifier on ANSWERS: they agree on answers 1 and 2 and disagree on 3 and 4."""
    substring = complied(SubstringJudge()(PROMPTS, ANSWERS), "refusal")
    classifier = complied(ClassifierJudge(str(classifier_dir))(PROMPTS, ANSWERS), "refusal")
    both = agreement("substring", substring, "classifier", classifier)
    assert both.confusion == [[1, 1], [1, 1]] and both.observed == 0.5 and both.kappa == pytest.approx(0.0)
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a, b = rng.random(200) < 0.3, rng.random(200) < 0.5
    b[:60] = a[:60]
    assert agreement("a", a, "b", b).kappa == pytest.approx(cohen_kappa_score(a, b))
    assert agreement("a", [True] * 5, "b", [True] * 5).observed == 1.0
    assert math.isnan(agreement("a", [True] * 5, "b", [True] * 5).kappa)  # chance agreement is 1: undefined
    assert complied(SubstringJudge()(PROMPTS, ANSWERS), "refusal") == [False, True, False, True]
    with pytest.raises(ConfigError, match="same answers"):
        agreement("a", [True], "b", [True, False])


def test_the_evaluation_table_carries_every_judge_and_the_report_their_agreement(classifier_dir, tmp_path):
    from conftest import QUICK_EVAL, perturbed, tiny_suite

    from interp.core.models import load_model
    from interp.evaluation.suite import Candidate, EvalConfig
    from interp.evaluation.table import evaluate_models
    from interp.report.judge_tables import judge_table
    from interp.report.study_tables import study_report

    tiny = build_tiny(tmp_path / "tiny", "llama")
    model = load_model(tiny)
    other = perturbed(load_model(tiny))
    guard = scripted_guard(tmp_path / "guard", "unsafe\nS2")
    suite = tiny_suite()
    specs = (f"classifier:{classifier_dir}", f"guard:{guard}")

    def table(judges):
        return evaluate_models(
            [Candidate("base", model, plan="base"), Candidate("other", other, plan="finetuned")],
            suite,
            refusal_tokens=[5],
            reference=other,
            config=EvalConfig(**{**QUICK_EVAL.__dict__, "judges": judges}),
            progress=False,
            log=lambda _: None,
        )

    plain, judged = table(()), table(specs)
    assert all(row.judges == {} for row in plain)
    for row, alone in zip(judged, plain):
        assert row.outcomes == alone.outcomes  # the substring list's answers and decisions are the same
        assert set(row.judges) == {f"classifier:{classifier_dir}@REJECTION", f"guard:{guard}"}
        for judged_row in row.judges.values():
            assert set(judged_row["outcomes"]) == set(suite.sets()) - {"task"}
            assert all(len(v) == len(suite.sets()[k]) for k, v in judged_row["outcomes"].items())
        assert all(x == 1 for v in row.judges[f"guard:{guard}"]["outcomes"].values() for x in v)  # always unsafe
    text = judge_table(judged)
    assert len(text.splitlines()) == 2 + 2 * 2 and "(harm)" in text and "(refusal)" in text
    assert "## Model judges" in study_report(judged, [], [], {}) and "## Model judges" not in study_report(
        plain, [], [], {}
    )
    with pytest.raises(ConfigError, match="unknown judge"):
        EvalConfig(judges=("keywords",))


def test_d3_two_labels_of_one_classifier_are_two_judges(classifier_dir):
    """Review defect D3: judges were named by path alone, so a second label replaced the first."""
    first, second = parse_judge(f"classifier:{classifier_dir}"), parse_judge(f"classifier:{classifier_dir}@NORMAL")
    assert first.name != second.name and first.key != second.key
    with pytest.raises(ConfigError, match="given twice"):
        EvalConfig(judges=(f"classifier:{classifier_dir}", f"classifier:{classifier_dir}"))
    from conftest import tiny_suite

    from interp.core.models import load_model
    from interp.evaluation.suite import Candidate
    from interp.evaluation.table import evaluate_models

    model = load_model(build_tiny(classifier_dir.parent / "tiny-for-judges", "llama"))
    same = (f"classifier:{classifier_dir}", f"classifier:{classifier_dir}@REJECTION")  # one judge, two spellings
    with pytest.raises(ConfigError, match="twice"):
        evaluate_models(
            [Candidate("m", model)],
            tiny_suite(),
            refusal_tokens=[5],
            reference=model,
            config=EvalConfig(judges=same),
            progress=False,
            log=lambda _: None,
        )


def test_d6_a_judge_whose_head_would_be_random_is_refused(classifier_dir, tmp_path):
    """Review defect D6: a language model read as a classifier (or the reverse) got randomly initialised
    weights, and their noise was tabulated."""
    lm = build_tiny(tmp_path / "lm", "llama")
    with pytest.raises(ConfigError, match="lacks trained weights for score"):
        parse_judge(f"classifier:{lm}@LABEL_1")
    with pytest.raises(ConfigError, match="lacks trained weights"):
        parse_judge(f"guard:{classifier_dir}")


@pytest.mark.parametrize("damage", ["empty folder", "tokenizer only", "truncated weights"])
def test_d18_a_judge_folder_that_does_not_load_is_one_line_before_any_work(classifier_dir, tmp_path, damage):
    """Review defect D18: such folders passed the check before the run and failed with a traceback at
    the evaluation, after everything else had run."""
    import shutil

    folder = tmp_path / "judge"
    shutil.copytree(classifier_dir, folder)
    if damage == "empty folder":
        shutil.rmtree(folder)
        folder.mkdir()
    elif damage == "tokenizer only":
        (folder / "model.safetensors").unlink()
        (folder / "config.json").unlink()
    else:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:500])
    spec = f"classifier:{folder}"
    if damage == "truncated weights":
        check_judge_spec(spec, resolve=True)  # looks whole from outside; the load says what is wrong
        with pytest.raises(ConfigError, match="cannot be loaded"):
            parse_judge(spec)
    else:
        with pytest.raises(ConfigError, match="config.json"):
            check_judge_spec(spec, resolve=True)
