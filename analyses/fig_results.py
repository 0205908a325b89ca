"""Figure: harmful refusal, over-refusal and task accuracy of every evaluated model (report.json)."""
from _common import run_from_args

from interp.plots import plot_results, save_figure

run, out = run_from_args(__doc__)
print(save_figure(plot_results(run.report()["models"]), out, "results"))
