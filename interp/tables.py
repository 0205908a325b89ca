"""The tables a notebook shows, in one namespace (``interp.tables``): each takes a result and returns markdown.

* ``layer_table(analysis)``: the per-layer measures, the components, positions and the direction selection;
* ``organism_table(manifest)``: the default pair's behaviour as measured when it was built;
* ``results_table(rows)``: the evaluation table (judged rates with intervals, task accuracy, KL);
* ``targets_table(targets)`` and ``paired_table(tests)``: the restoration targets and the paired tests;
* ``markdown_table(head, rows)``: any table of strings.
"""

from __future__ import annotations

from .analyze import layer_table
from .report.study_tables import organism_table, paired_table, results_table, targets_table
from .report.tables import markdown_table

__all__ = ["layer_table", "markdown_table", "organism_table", "paired_table", "results_table", "targets_table"]
