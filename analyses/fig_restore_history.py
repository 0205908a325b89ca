"""Figure: safety and retain losses per step of each restoration (report.json)."""

from _common import study_figure

study_figure("restore_history", __doc__)
