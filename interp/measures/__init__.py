"""Per-layer measures of a pair: capture, directions, probes, comparison, causal checks, the layer map."""
