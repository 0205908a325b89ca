"""Figure: harmful vs harmless prompts on the base's top two principal components, both models,
at the top-ranked layer."""
from _common import run_from_args

from interp.plots import plot_pca, save_figure

run, out = run_from_args(__doc__)
layer = run.layer_map.ranked_layers[0]
print(*save_figure(plot_pca(*run.pca(layer), layer), out, "pca"), sep="\n")
