"""Figure: per-layer causal effects on the refusal score (add, patch, ablate)."""

from _common import analysis_figure

analysis_figure("causal_effects", __doc__)
