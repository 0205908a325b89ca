"""The claim across the organism family: one row per organism from its protocol run (``family_table``).

Per organism (``interp protocol --recipe NAME``, one folder each): the ranked plan's layers; its rank among
each seed's draws on judged harmful refusal (H1) and at the base's over-refusal (H2a), with whether every
seed's rank is at or above the 90th percentile of the draws (rank <= 10% of the plans compared, the
issue's bar); the mixed estimates ranked - draws with their 95% intervals and Holm p; ranked - all layers
(H3) and ranked - the released recipe (H4) with their intervals. Verdicts are the protocol file's. An
organism whose run is missing is listed as such, never skipped; one whose run is partial (seeds still to
run: ``interp protocol --seeds``) says so beside its name. Where the runs were computed in different dtypes
(a CPU without bf16 units runs in float32), each row outside the commonest dtype names its own beside its
name, and a line under the table says so: those rows are not the same computation as the others.

The map's stability across the default recipe's seeds (``seed_overlap``): for every two of ``default``,
``seed-1`` and ``seed-2`` that have a run, how many of the ranked layers they share (|A & B| of k).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from ..report.tables import markdown_table
from .report import ProtocolResult

TOP = 10  # "at or above the 90th percentile of the draws": within the best tenth of the plans compared


def _points(value: float, interval) -> str:
    text = f"{100 * value:+.1f}"
    return text if interval is None else f"{text} [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"


def top_decile(ranks: Mapping, draws: int) -> bool:
    """Every seed's rank (1 = best, among the ranked plan and ``draws`` draws) within the top 10%."""
    return all(int(rank) <= (draws + 1) // TOP for rank in ranks.values())


def ranked_layers(folder: str | Path, result: ProtocolResult | None = None) -> list[int]:
    """The ranked plan's layers of the protocol run in ``folder``."""
    result = result or ProtocolResult.load(folder)
    ranked = (result.ranking or {}).get("selected")
    if ranked is None:  # a run from before rankings were recorded (the layer map's score): its layer map says
        ranked = json.loads((Path(folder) / "layer_map.json").read_text())["selected_layers"]
    return sorted(ranked)


def seed_overlap(folders: Mapping[str, str | Path], seeds=("default", "seed-1", "seed-2")) -> str:
    """The layers shared by the ranked plans of every two of ``seeds`` with a run (module docstring); ""
    with fewer than two."""
    ranked = {name: ranked_layers(folders[name]) for name in seeds
              if name in folders and (Path(folders[name]) / "protocol.json").exists()}  # fmt: skip
    if len(ranked) < 2:
        return ""
    pairs = [f"{a} {ranked[a]} and {b} {ranked[b]}: {len(set(ranked[a]) & set(ranked[b]))} of {len(ranked[a])}"
             for a, b in itertools.combinations(ranked, 2)]  # fmt: skip
    return "Ranked layers shared across the default recipe's seeds: " + "; ".join(pairs) + "."


def family_row(name: str, folder: str | Path) -> list[str]:
    """The family table's row of the protocol run in ``folder`` (module docstring)."""
    result = ProtocolResult.load(folder)
    claims = {c.name: c for c in result.claims}
    if result.missing_seeds:
        done, every = sorted(result.rows), len(result.rows) + len(result.missing_seeds)
        name += f" (partial: seeds {', '.join(map(str, done))} of {every})"
    cells = [name, str(ranked_layers(folder, result))]
    for label in ("H1", "H2a"):
        claim = claims[label]
        ranks, draws = claim.detail["ranks"], claim.detail["draws"]
        ranks_text = ", ".join(str(int(r)) for _, r in sorted(ranks.items(), key=lambda kv: int(kv[0])))
        bar = "yes" if top_decile(ranks, draws) else "no"
        cells += [f"{ranks_text} of {draws + 1} ({bar})", _points(claim.estimate, claim.interval),
                  f"{claim.holm_p:.3g}, {claim.verdict}"]  # fmt: skip
    for label in ("H3", "H4"):
        claim = claims.get(label)
        cells.append("not run" if claim is None else f"{_points(claim.estimate, claim.interval)}, {claim.verdict}")
    return cells


HEAD = [
    "organism", "ranked layers",
    "H1 rank per seed (top 10%?)", "H1 ranked - draws (points)", "H1 Holm p, verdict",
    "H2a rank per seed (top 10%?)", "H2a ranked - draws at matched over-refusal", "H2a Holm p, verdict",
    "H3 ranked - all layers", "H4 ranked - released recipe",
]  # fmt: skip


def family_table(
    folders: Mapping[str, str | Path], first: str = "organism", dtypes: Mapping[str, str] | None = None
) -> str:
    """The markdown table of the family (module docstring): ``folders`` maps each organism's name to its
    protocol run's folder (``protocol.json``). Runs of one organism with other rankings compare the same way
    (``first="ranking"``). ``dtypes`` maps a name to the dtype its run computed in (its ``config.toml``); the
    rows outside the commonest one are marked, with a line under the table."""
    dtypes = {name: dtype for name, dtype in (dtypes or {}).items() if name in folders and dtype}
    counts = Counter(dtypes.values())
    usual = counts.most_common(1)[0][0] if len(counts) > 1 else None
    rows = []
    for name, folder in folders.items():
        label = name if usual is None or dtypes.get(name, usual) == usual else f"{name} ({dtypes[name]})"
        if not (Path(folder) / "protocol.json").exists():
            rows.append([label, "(no protocol run)", *[""] * (len(HEAD) - 2)])  # listed, never skipped
            continue
        rows.append(family_row(label, folder))
    table = markdown_table([first, *HEAD[1:]], rows)
    if usual is None:
        return table
    return f"{table}\n\nComputed in {usual} except where a row names another dtype."
