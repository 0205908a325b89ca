"""Figure: per-layer causal effects on the refusal score (add, patch, ablate)."""
from _common import run_from_args

from interp.plots import plot_causal_effects, save_figure

run, out = run_from_args(__doc__)
fig = plot_causal_effects(run.metrics, run.layer_map.selected_layers)
print(*save_figure(fig, out, "causal_effects"), sep="\n")
