"""Figure: harmful refusal, over-refusal and task accuracy of every evaluated model (report.json)."""

from _common import study_figure

study_figure("results", __doc__)
