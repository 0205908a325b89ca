"""Figure: harmful vs harmless prompts on the base's top two principal components, both models,
at the top-ranked layer."""
import numpy as np
from _common import run_from_args

from interp.compare import pca_2d
from interp.plots import plot_pca, save_figure

run, out = run_from_args(__doc__)
layer = run.layer_map.ranked_layers[0]
kinds = ("harmful", "harmless")
acts = {role: np.concatenate([run.activations(role, k).at(layer).numpy() for k in kinds]) for role in ("base", "ft")}
labels = np.concatenate([run.activations("base", k).labels for k in kinds]).astype(int)
print(*save_figure(plot_pca(*pca_2d(acts["base"], acts["ft"]), labels, layer), out, "pca"), sep="\n")
