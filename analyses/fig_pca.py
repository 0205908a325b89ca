"""Figure: harmful vs harmless prompts on the base's top two principal components, both models, at the
top-ranked layer."""

from _common import analysis_figure

analysis_figure("pca", __doc__)
