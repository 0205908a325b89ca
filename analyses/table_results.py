"""Table: the evaluation table of base, fine-tuned, restored and baselines (with intervals), the targets and
the paired tests (report.json)."""

from _common import args_from

from interp import StudyResult
from interp.tables import paired_table, results_table, targets_table

study = StudyResult.load(args_from(__doc__).run)
print(results_table(study.rows))
print("\nprompts: " + ", ".join(f"{k} {v}" for k, v in study.details["prompts"]["evaluation"].items()))
print(targets_table(study.targets))
print(paired_table(study.paired))
