"""Rendering: markdown tables, plots and the figure registry. Nothing here computes a measure."""
