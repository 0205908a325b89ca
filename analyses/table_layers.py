"""Table: the per-layer measures and the ranking score, as markdown (selected layers starred)."""

from _common import args_from

from interp import AnalysisResult
from interp.tables import layer_table

result = AnalysisResult.load(args_from(__doc__).run)
print(layer_table(result))
print(f"\nselected layers: {result.layer_map.selected_layers}; best add layer {result.steer_layer}")
s = result.steering
if s is None:
    raise SystemExit("no generation check in this run (see report.md's steering row)")
print(f"steering check at layer {s.layer} on {s.n_harmful} harmful / {s.n_harmless} harmless prompts:")
print(f"  fine-tuned: harmful refusal {s.finetuned_harmful_refusal:.1%}, harmless {s.finetuned_harmless_refusal:.1%}")
for row in s.steered:
    print(
        f"  + {row['scale']:g} x base refusal vector: harmful {row['harmful_refusal']:.1%}, "
        f"harmless {row['harmless_refusal']:.1%}"
    )
