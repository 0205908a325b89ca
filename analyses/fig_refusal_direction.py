"""Figure: cosine of the refusal directions and retention of the base direction's separation."""

from _common import analysis_figure

analysis_figure("refusal_direction", __doc__)
