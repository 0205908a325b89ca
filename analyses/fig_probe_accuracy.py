"""Figure: harmful-vs-harmless probe accuracy per layer (base, fine-tuned, transfer)."""

from _common import analysis_figure

analysis_figure("probe_accuracy", __doc__)
