"""Regenerate the organism data shipped in the package (``interp/data/organism/``).

    python scripts/regenerate_package_data.py answers    # SmolLM2's own greedy answers (about 2 minutes)
    python scripts/regenerate_package_data.py adapters   # train the default organism from its recipe and
                                                         # ship its two fp16 adapters (several minutes)
    python scripts/regenerate_package_data.py fingerprints  # only the weight fingerprints in both files,
                                                         # after the fingerprint function changed (seconds)

Run ``answers`` first: the recipe trains on those answers. Commit the files it writes.
"""

from __future__ import annotations

import sys

from interp.core.models import load_model
from interp.organism import (
    PACKAGE_DATA,
    OrganismRecipe,
    build_organism,
    refresh_shipped_fingerprints,
    ship_adapters,
    ship_answers,
)


def main() -> None:
    what = sys.argv[1:] or ["answers", "adapters"]
    unknown = set(what) - {"answers", "adapters", "fingerprints"}
    if unknown:
        sys.exit(f"regenerate_package_data: unknown {sorted(unknown)}; choose answers, adapters or fingerprints")
    recipe = OrganismRecipe()
    if "answers" in what:
        print(f"wrote {ship_answers(load_model(recipe.source), recipe)}")
    if "fingerprints" in what:
        print(f"fingerprints {refresh_shipped_fingerprints(recipe)} written into {PACKAGE_DATA}")
    if "adapters" in what:
        organism = build_organism(recipe, rebuild=True)
        print(f"wrote {ship_adapters(organism)} and the adapters beside it, into {PACKAGE_DATA}")


if __name__ == "__main__":
    main()
