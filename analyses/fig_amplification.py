"""Figure: task-direction amplification and where harmful prompts sit along the task direction."""
from _common import run_from_args

from interp.plots import plot_amplification, save_figure

run, out = run_from_args(__doc__)
fig = plot_amplification(run.metrics, run.layer_map.selected_layers)
print(*save_figure(fig, out, "amplification"), sep="\n")
