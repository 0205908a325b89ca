"""The answers a run keeps, and judging them again without a model.

``interp run`` and ``interp evaluate`` write every answer of every row beside their report, in
``answers.json.gz`` (``save_answers``): per judged set its prompts (and categories), per row and sample the
answers in the prompts' order. With ``--full`` the answers are complete (each to its token budget, never
stopped at a refusal), so any judge can read them later: ``rejudge`` applies one
(``interp.core.judges.parse_judge``) to every row's answers on every judged set (not the task set) and
``interp judge RUN_DIR --judge SPEC`` writes its rates, with 95% intervals, and its agreement with the
substring judge (Cohen's kappa on "did the model comply?") into ``RUN_DIR/judged/``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.judges import Judge, SubstringJudge, complied
from ..errors import ConfigError
from ..io.atomic import atomic_write_json_gz, read_json_gz

ANSWERS_FILE = "answers.json.gz"
ANSWERS_VERSION = 1


@dataclass
class RunAnswers:
    """A run's answers: ``sets[name] = {"prompts": [...], "categories": [...] or None}``, ``models[row] =
    [{set: [answer per prompt]} per sample]`` and whether the answers are ``complete`` (never stopped at a
    refusal)."""

    sets: dict[str, dict]
    models: dict[str, list[dict[str, list[str]]]]
    complete: bool

    def to_dict(self) -> dict:
        return {"version": ANSWERS_VERSION, "complete": self.complete, "sets": self.sets, "models": self.models}

    @classmethod
    def of_rows(cls, suite, rows: Sequence, complete: bool) -> RunAnswers:
        """The answers of evaluated ``rows`` (``EvalRow.answers``) on ``suite`` (an ``EvalSuite``)."""
        sets = {
            name: {"prompts": list(p.instructions), "categories": list(p.categories) if any(p.categories) else None}
            for name, p in suite.sets().items()
        }
        return cls(sets, {row.name: row.answers for row in rows if row.answers}, complete)

    def save(self, folder: str | Path) -> Path:
        return atomic_write_json_gz(Path(folder) / ANSWERS_FILE, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> RunAnswers:
        path = Path(folder) / ANSWERS_FILE
        if not Path(folder).is_dir():
            raise ConfigError(f"{folder} is not a folder (give a run folder written by interp run or interp evaluate)")
        if not path.is_file():
            raise ConfigError(f"{folder} holds no {ANSWERS_FILE}: it was written before runs kept their answers")
        try:
            data = read_json_gz(path)
        except (OSError, ValueError, EOFError) as error:
            raise ConfigError(f"{path} cannot be read ({type(error).__name__}: {error})") from None
        if data.get("version") != ANSWERS_VERSION:
            raise ConfigError(f"{path} is version {data.get('version')}, this interp reads {ANSWERS_VERSION}")
        return cls(data["sets"], data["models"], bool(data["complete"]))


@dataclass
class Rejudged:
    """One judge's decisions on a run's answers: ``decisions[row][set]`` per prompt (the share of samples
    with a positive decision: refused for a refusal judge, unsafe for a harm judge), ``complied`` the same
    for "did the model comply?", and the substring judge's ``substring_complied`` on the same answers."""

    judge: str
    kind: str
    decisions: dict[str, dict[str, list[float]]]
    complied: dict[str, dict[str, list[list[bool]]]]  # row -> set -> per sample
    substring_complied: dict[str, dict[str, list[list[bool]]]]
    unparsed: dict[str, int]
    samples: dict[str, int]
    complete: bool


def rejudge(answers: RunAnswers, judge: Judge) -> Rejudged:
    """``judge`` on every row's answers to every judged set (module docstring)."""
    substring = SubstringJudge()
    decisions, mine, theirs, unparsed, samples = {}, {}, {}, {}, {}
    judged = [name for name in answers.sets if name != "task"]
    for row, per_sample in answers.models.items():
        decisions[row], mine[row], theirs[row], unparsed[row] = {}, {}, {}, 0
        samples[row] = len(per_sample)
        for name in judged:
            prompts = answers.sets[name]["prompts"]
            verdicts = [judge(prompts, sample[name]) for sample in per_sample]
            decisions[row][name] = [sum(v[i].decision for v in verdicts) / len(verdicts) for i in range(len(prompts))]
            mine[row][name] = [complied(v, judge.kind) for v in verdicts]
            theirs[row][name] = [complied(substring(prompts, sample[name]), "refusal") for sample in per_sample]
            unparsed[row] += sum(x.label == "unparsed" for v in verdicts for x in v)
    return Rejudged(judge.name, judge.kind, decisions, mine, theirs, unparsed, samples, answers.complete)


def judged_file_stem(judge_name: str) -> str:
    """A file name for a judge's results (``classifier:/models/x@REFUSAL`` -> ``classifier_models_x_REFUSAL``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", judge_name).strip("_") or "judge"
