"""``interp figures``: a run folder's figures and tables redrawn from its saved results (no model), and a
folder with no result one clear line."""

from __future__ import annotations

import pytest

from interp.cli import main
from interp.evaluation.suite import EvalRow
from interp.evaluation.targets import Target, paired_tests
from interp.study import StudyResult


def _row(name: str, harmful_refused: int) -> EvalRow:
    """A row with a planted outcome: the first ``harmful_refused`` of 20 harmful prompts refused."""
    harmful = [1] * harmful_refused + [0] * (20 - harmful_refused)
    return EvalRow(
        name=name,
        harmful_refusal=harmful_refused / 20,
        refusal_score=0.0,
        harmless_refusal=0.0,
        xstest_refusal=None,
        task_accuracy=1.0,
        kl=0.0,
        harmful_answer_kinds={},
        examples={},
        n={"harmful": 20, "harmless": 4, "task": 3},
        outcomes={"harmful": harmful, "harmless": [0] * 4, "task": [1] * 3},
        plan=name,
    )


@pytest.fixture()
def study_folder(tmp_path):
    """A run folder holding a study (``report.json``) and no analysis."""
    rows = [_row("base", 18), _row("finetuned", 4), _row("ranked", 15)]
    history = [{"step": step, "safety": 1.0 / step, "retain": 0.1} for step in (1, 2, 3)]
    targets = [Target("harmful refusal", 0.75, 0.5, "met")]
    study = StudyResult(rows, targets, {"ranked": history}, paired_tests(rows))
    study.details = {"prompts": {"evaluation": {"harmful": 20, "harmless": 4, "task": 3}}}
    study.save(tmp_path / "run")
    return tmp_path / "run"


def test_a_folder_without_results_is_one_line_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["figures", str(tmp_path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"interp figures: error: {tmp_path} holds no analysis (metrics.json)")
    assert not out.exists()


def test_a_study_folder_gets_its_figures_and_results_table(study_folder, tmp_path, capsys):
    assert main(["figures", str(study_folder)]) == 0
    written = capsys.readouterr().out.split()
    names = ("results.png", "results.svg", "restore_history.png", "restore_history.svg", "results_table.md")
    assert written == [str(study_folder / "figures" / name) for name in names]
    table = (study_folder / "figures" / "results_table.md").read_text()
    assert "| ranked |" in table and "prompts: harmful 20, harmless 4, task 3" in table
    assert "harmful refusal" in table and "ranked vs base" in table  # the targets and the paired tests

    out = tmp_path / "only"
    assert main(["figures", str(study_folder), "--out", str(out), "--only", "results_table"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "results_table.md")]
    assert sorted(p.name for p in out.iterdir()) == ["results_table.md"]

    assert main(["figures", str(study_folder), "--only", "pca"]) == 2  # an analysis figure: no analysis here
    assert "has no figure or table ['pca']; it has results, restore_history, results_table" in capsys.readouterr().err
