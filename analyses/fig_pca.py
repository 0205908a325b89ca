"""Figure: harmful vs harmless prompts on the base's top two principal components, both models,
at the top-ranked layer."""
import numpy as np
from _common import run_from_args

from interp.compare import pca_2d
from interp.plots import plot_pca, save_figure

run, out = run_from_args(__doc__)
layer = run.layer_map.ranked_layers[0]
acts = {role: np.concatenate([run.activations(role, kind).at(layer).numpy() for kind in ("harmful", "harmless")])
        for role in ("base", "ft")}
labels = np.concatenate([run.activations("base", kind).labels for kind in ("harmful", "harmless")]).astype(int)
base_2d, ft_2d = pca_2d(acts["base"], acts["ft"])
print(*save_figure(plot_pca(base_2d, ft_2d, labels, layer), out, "pca"), sep="\n")
