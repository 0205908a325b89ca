"""What ``interp evaluate`` measured, as one result that renders and saves itself (``Evaluation``).

``evaluation.json`` holds every row (rates, intervals, scores; not the answers), the paired tests of every
row against the base and the fine-tuned model, the refusal tokens and the suite's sizes; ``answers.json.gz``
keeps the answers (``interp.evaluation.rejudge.RunAnswers``: ``interp judge`` reads them again) and
``evaluation.md`` the tables ``report`` renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..evaluation.rejudge import RunAnswers
from ..evaluation.suite import EvalConfig, EvalRow, EvalSuite
from ..evaluation.targets import PairedTest, paired_tests
from ..io.atomic import atomic_write_json, atomic_write_text
from .judge_tables import judge_table
from .study_tables import category_table, paired_table, parts_table, results_table


@dataclass
class Evaluation:
    """The rows of ``evaluate_models`` on ``suite`` (base and fine-tuned first), their paired tests and the
    settings they were judged with; ``reasoning``: answers have a trace judged apart from the final answer."""

    rows: list[EvalRow]
    suite: EvalSuite
    refusal_tokens: list[int]
    config: EvalConfig
    reasoning: bool = False

    @property
    def tests(self) -> list[PairedTest]:
        """Every row against the base and the fine-tuned model, on every rate both measured."""
        return paired_tests(self.rows, against=("base", "finetuned"))

    def report(self) -> str:
        """The evaluation table, the paired tests, and where the suite or settings have them: refusal by
        Do-Not-Answer risk area, trace and final answer judged apart, the model judges' agreement."""
        text = results_table(self.rows) + "\n\nPaired tests (each row against the base and the fine-tuned model):\n\n"
        text += paired_table(self.tests)
        if self.suite.donotanswer is not None:
            text += "\n\nDo-Not-Answer refusal by risk area:\n\n" + category_table(
                self.rows, self.suite.donotanswer.categories
            )
        if self.reasoning:
            text += "\n\nReasoning trace and final answer, judged apart (substring list):\n\n" + parts_table(self.rows)
        if self.config.judges:
            text += "\n\nModel judges beside the substring list (agreement on 'did the model comply?'):\n\n"
            text += judge_table(self.rows)
        return text

    def save(self, folder: str | Path) -> list[Path]:
        """``evaluation.json``, ``answers.json.gz`` and ``evaluation.md`` into ``folder``, each written
        atomically; returns the paths written."""
        folder = Path(folder)
        saved = {
            "models": [{k: v for k, v in r.to_dict().items() if k != "answers"} for r in self.rows],
            "paired_tests": [t.to_dict() for t in self.tests],
            "refusal_tokens": list(self.refusal_tokens),
            "sizes": self.suite.sizes(),
        }
        return [
            atomic_write_json(folder / "evaluation.json", saved),
            RunAnswers.of_rows(self.suite, self.rows, complete=not self.config.stop_at_refusal).save(folder),
            atomic_write_text(folder / "evaluation.md", self.report() + "\n"),
        ]
