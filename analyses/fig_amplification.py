"""Figure: task-direction amplification and where harmful prompts sit along the task direction."""

from _common import analysis_figure

analysis_figure("amplification", __doc__)
