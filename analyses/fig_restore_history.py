"""Figure: safety and retain losses per step of each restoration (report.json)."""
from _common import run_from_args

from interp.plots import plot_restore_history, save_figure

run, out = run_from_args(__doc__)
print(save_figure(plot_restore_history(run.report()["histories"]), out, "restore_history"))
