"""Prompt sets: loaders, the chat template in one place, and the built-in sets."""

from __future__ import annotations

import json

import pytest

from interp.core.chat import SAFETY_REMINDER, ChatFormat
from interp.core.models import load_tokenizer
from interp.core.prompts import (
    PUBLIC_SETS,
    PromptSet,
    arithmetic_prompts,
    harmful_prompts,
    harmless_prompts,
    load_prompts,
    parse_spec,
    public_manifest,
    public_prompts,
)
from interp.errors import EmptyPromptSetError, PromptFormatError


def test_builtin_sets_have_the_promised_size_and_fixed_splits():
    harmful, harmless = harmful_prompts("all"), harmless_prompts("all")
    assert len(harmful) >= 120 and len(set(harmful.categories)) >= 8
    assert len(harmless) >= 120
    assert set(harmful.labels) == {1} and set(harmless.labels) == {0}
    train, val = harmful_prompts("train"), harmful_prompts("val")
    assert len(train) + len(val) == len(harmful)
    assert not set(train.instructions) & set(val.instructions)
    assert set(val.categories) == set(harmful.categories)  # stratified
    mean = lambda p: sum(len(t) for t in p.instructions) / len(p)  # noqa: E731
    assert 0.6 < mean(harmful) / mean(harmless) < 1.6  # of similar length


def test_arithmetic_problems_are_seeded_and_answers_are_right():
    a, b = arithmetic_prompts("train", seed=3), arithmetic_prompts("train", seed=3)
    assert a == b and a != arithmetic_prompts("train", seed=4)
    val = arithmetic_prompts("val", seed=3)
    assert len(a) + len(val) == 200 and 20 <= len(val) <= 60  # about one in five is validation
    assert not set(a.instructions) & set(val.instructions)
    for answer in a.answers:
        for line in answer.splitlines()[:-1]:
            expr, result = line.removeprefix("Step ").split(": ", 1)[1].rstrip(".").split(" = ")
            assert eval(expr.replace("x", "*")) == int(result)  # noqa: S307
        assert answer.splitlines()[-1].startswith("The answer is ")


def test_the_public_sets_ship_with_their_pinned_rows_and_hashes():
    """Every public set the README's tables use ships in the package: rows as its manifest says, each
    file matching its pinned sha256 (``public_prompts`` checks it), a source and a license for each."""
    manifest = public_manifest()
    sizes = {name: len(public_prompts(name)) for name in PUBLIC_SETS}
    assert sizes == {
        "harmful_train": 260,
        "harmful_val": 39,
        "harmless_train": 1000,
        "harmless_val": 300,
        "xstest_safe": 250,
        "xstest_unsafe": 200,
        "donotanswer": 939,
    }
    assert all(entry["source"] and entry["license"] and len(entry["sha256"]) == 64 for entry in manifest.values())
    assert sum(entry["rows"] for entry in manifest.values()) == sum(sizes.values())
    harmful_val = public_prompts("harmful_val")
    assert harmful_val.categories[0] is not None and set(harmful_val.labels) == {1}
    assert set(public_prompts("xstest_safe").labels) == {0} and set(public_prompts("xstest_unsafe").labels) == {1}


def test_do_not_answer_comes_with_its_five_risk_areas():
    dna = public_prompts("donotanswer")
    assert len(set(dna.categories)) == 5 and set(dna.labels) == {1}
    assert parse_spec("public:donotanswer").instructions == dna.instructions


def test_a_damaged_public_file_is_refused_in_one_line(tmp_path, monkeypatch):
    import shutil

    import interp.core.prompts as prompts

    shutil.copytree(prompts.PUBLIC_DATA, tmp_path / "public")
    (tmp_path / "public" / "harmful_val.json").write_text("[]")
    monkeypatch.setattr(prompts, "PUBLIC_DATA", tmp_path / "public")
    monkeypatch.setattr(prompts, "_checked", set())
    with pytest.raises(PromptFormatError, match="does not match its pinned sha256"):
        public_prompts("harmful_val")
    with pytest.raises(PromptFormatError, match="unknown public prompt set"):
        public_prompts("advbench")


def test_jsonl_and_txt_and_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"goal": "x one"}) + "\n" + json.dumps({"goal": "x two"}) + "\n")
    assert load_prompts(tmp_path / "a.jsonl").instructions == ("x one", "x two")
    (tmp_path / "b.txt").write_text("first\n\nsecond\n")
    assert len(load_prompts(tmp_path / "b.txt")) == 2
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(PromptFormatError, match="not valid JSON"):
        load_prompts(tmp_path / "c.json")
    (tmp_path / "d.csv").write_text("text\nhello\n")
    with pytest.raises(PromptFormatError, match="no column"):
        load_prompts(tmp_path / "d.csv")
    with pytest.raises(PromptFormatError, match="unknown prompt file type"):
        (tmp_path / "e.xml").write_text("<a/>")
        load_prompts(tmp_path / "e.xml")


def test_empty_set_and_bad_rows():
    with pytest.raises(EmptyPromptSetError, match="empty-set"):
        PromptSet(name="empty-set", instructions=()).require_nonempty()
    with pytest.raises(PromptFormatError, match="instruction 1 is empty"):
        PromptSet(name="bad", instructions=("ok", "  "))
    with pytest.raises(PromptFormatError, match="labels has 1 entries"):
        PromptSet(name="bad", instructions=("a", "b"), labels=(1,))


def test_chat_format_applies_template_system_and_suffix(tiny_llama):
    tokenizer = load_tokenizer(str(tiny_llama))
    plain = ChatFormat().render(tokenizer, "Hi there")
    assert plain == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    reminded = ChatFormat(system_prompt="Be safe.", user_suffix=SAFETY_REMINDER).render(tokenizer, "Hi there")
    assert reminded.startswith("<|im_start|>system\nBe safe.<|im_end|>")
    assert "Hi there" + SAFETY_REMINDER + "<|im_end|>" in reminded
