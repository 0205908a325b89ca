"""Table: the per-layer measures and the ranking score, as markdown (selected layers starred)."""
from _common import run_from_args

from interp.analyze import per_layer_table

run, _ = run_from_args(__doc__)
print(per_layer_table(run.metrics, run.layer_map))
print(f"\nselected layers: {run.layer_map.selected_layers}")
s = run.steering
if not s["steered"]:
    raise SystemExit(f"best add layer {s['layer']} (no generation check in this run; see report.md's steering row)")
print(f"steering check at layer {s['layer']} on {s['n_harmful']} harmful / {s['n_harmless']} harmless prompts:")
print(f"  fine-tuned: harmful refusal {s['finetuned_harmful_refusal']:.1%}, harmless {s['finetuned_harmless_refusal']:.1%}")
for row in s["steered"]:
    print(f"  + {row['scale']:g} x base refusal vector: harmful {row['harmful_refusal']:.1%}, "
          f"harmless {row['harmless_refusal']:.1%}")
