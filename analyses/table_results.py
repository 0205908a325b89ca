"""Table: the evaluation table of base, fine-tuned, restored and baselines, and the targets (report.json)."""
from _common import run_from_args

from interp.evaluate import table_markdown

run, _ = run_from_args(__doc__)
report = run.report()
print(table_markdown(report["models"]))
print("\nprompts: " + ", ".join(f"{k} {v}" for k, v in report["prompts"]["evaluation"].items()))
for t in report["targets"]:
    print(f"[{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']:.4g} (threshold {t['threshold']:.4g})")
