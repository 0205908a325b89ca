"""Figure: cosine of the refusal directions and retention of the base direction's separation."""
from _common import run_from_args

from interp.plots import plot_refusal_direction, save_figure

run, out = run_from_args(__doc__)
fig = plot_refusal_direction(run.metrics, run.layer_map.selected_layers)
print(*save_figure(fig, out, "refusal_direction"), sep="\n")
