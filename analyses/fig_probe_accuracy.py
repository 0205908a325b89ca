"""Figure: harmful-vs-harmless probe accuracy per layer (base, fine-tuned, transfer)."""
from _common import run_from_args

from interp.plots import plot_probe_accuracy, save_figure

run, out = run_from_args(__doc__)
fig = plot_probe_accuracy(run.metrics, run.layer_map.selected_layers)
print(*save_figure(fig, out, "probe_accuracy"), sep="\n")
