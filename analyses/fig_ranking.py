"""Figure: the layer ranking's components and score per layer, selected layers boxed."""
from _common import run_from_args

from interp.plots import plot_ranking, save_figure
from interp.ranking import score_components

run, out = run_from_args(__doc__)
fig = plot_ranking(run.layer_map.scores, score_components(run.metrics), run.layer_map.selected_layers)
print(*save_figure(fig, out, "ranking"), sep="\n")
