"""Table: the per-layer measures and the ranking score, as markdown (selected layers starred)."""
from _common import run_from_args

from interp.analyze import per_layer_table

run, _ = run_from_args(__doc__)
print(per_layer_table(run.metrics, run.layer_map))
print(f"\nselected layers: {run.layer_map.selected_layers}")
print("steering check:", {k: v for k, v in run.steering.items() if k != "examples"})
