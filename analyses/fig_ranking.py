"""Figure: the layer ranking's components and score per layer, selected layers boxed."""

from _common import analysis_figure

analysis_figure("ranking", __doc__)
