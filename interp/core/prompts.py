"""Prompt sets as data, loaders for common files, the built-in sets and the ``builtin:`` spec grammar.

A ``PromptSet`` is plain data: a name, instructions, one label per instruction (``1`` harmful,
``0`` harmless, ``None`` unknown), optional categories and reference answers, and a split name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from ..errors import ConfigError, EmptyPromptSetError, PromptFormatError
from ..io.hashing import file_sha256, stable_hash

HARMFUL, HARMLESS = 1, 0


@dataclass(frozen=True)
class PromptSet:
    name: str
    instructions: tuple[str, ...]
    labels: tuple[int | None, ...] = ()
    categories: tuple[str | None, ...] = ()
    answers: tuple[str | None, ...] = ()  # reference answers (task sets), else empty
    split: str = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "instructions", tuple(self.instructions))
        n = len(self.instructions)
        for attr, default in (("labels", None), ("categories", None), ("answers", None)):
            values = tuple(getattr(self, attr)) or (default,) * n
            if len(values) != n:
                raise PromptFormatError(
                    f"prompt set {self.name!r}: {attr} has {len(values)} entries for {n} instructions"
                )
            object.__setattr__(self, attr, values)
        for i, text in enumerate(self.instructions):
            if not isinstance(text, str) or not text.strip():
                raise PromptFormatError(f"prompt set {self.name!r}: instruction {i} is empty or not text")

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def hash(self) -> str:
        return stable_hash([self.instructions, self.labels, self.answers])

    def require_nonempty(self) -> PromptSet:
        if len(self) == 0:
            raise EmptyPromptSetError(f"prompt set {self.name!r} ({self.split}) has no prompts")
        return self

    def subset(self, indices: Sequence[int], split: str | None = None) -> PromptSet:
        def pick(values: tuple) -> tuple:
            return tuple(values[i] for i in indices)

        return replace(
            self,
            instructions=pick(self.instructions),
            labels=pick(self.labels),
            categories=pick(self.categories),
            answers=pick(self.answers),
            split=split or self.split,
        )

    def duplicates(self) -> int:
        """How many instructions repeat an earlier one."""
        return len(self) - len(set(self.instructions))

    def deduplicated(self) -> PromptSet:
        """The set with each instruction once (its first occurrence), in order."""
        seen: set[str] = set()
        keep = [i for i, text in enumerate(self.instructions) if not (text in seen or seen.add(text))]
        return self if len(keep) == len(self) else self.subset(keep)

    def head(self, n: int) -> PromptSet:
        return self.subset(range(min(n, len(self))))

    def sample(self, n: int, seed: int = 0) -> PromptSet:
        """``n`` prompts drawn without replacement with a fixed seed (all of them if fewer)."""
        indices = sorted(random.Random(seed).sample(range(len(self)), min(n, len(self))))
        return self.subset(indices)

    def part(self, part: str) -> PromptSet:
        """The ``dev`` or ``test`` part of the set (``protocol_part``: about a third dev, by a hash of each
        text), in order: every choice is made on dev, claims are read from test."""
        if part not in PROTOCOL_PARTS:
            raise ConfigError(f"part must be one of {', '.join(PROTOCOL_PARTS)}, got {part!r}")
        return self.subset([i for i, text in enumerate(self.instructions) if protocol_part(text) == part], part)

    def with_label(self, label: int | None) -> PromptSet:
        return replace(self, labels=(label,) * len(self))

    def __add__(self, other: PromptSet) -> PromptSet:
        return PromptSet(
            name=f"{self.name}+{other.name}",
            instructions=self.instructions + other.instructions,
            labels=self.labels + other.labels,
            categories=self.categories + other.categories,
            answers=self.answers + other.answers,
            split=self.split if self.split == other.split else "mixed",
        )


def check_disjoint(a: PromptSet, b: PromptSet, what: str) -> None:
    """``ConfigError`` if ``a`` and ``b`` share instructions (``what`` names the pair in the message)."""
    shared = set(a.instructions) & set(b.instructions)
    if shared:
        same = "are the same set" if set(a.instructions) == set(b.instructions) else f"share {len(shared)} prompts"
        raise ConfigError(f"{what} {same} (e.g. {sorted(shared)[0]!r:.80}); they must be different prompts")


def check_distinct(prompts: PromptSet, control: PromptSet, what: str) -> None:
    """``ConfigError`` if every prompt of ``prompts`` is also in ``control`` (a task set that is the
    harmless set, say): the comparison between them would measure nothing."""
    if set(prompts.instructions) <= set(control.instructions):
        raise ConfigError(f"{what}: every prompt of {prompts.name!r} is also in {control.name!r}")


def without_duplicates(prompts: PromptSet, warn=None) -> PromptSet:
    """``prompts`` with each instruction once; says how many repeats were dropped (a repeated prompt
    would sit in the training and the test fold of a cross-validated probe at once)."""
    if prompts.duplicates():
        message = f"prompt set {prompts.name!r}: dropped {prompts.duplicates()} repeated prompts"
        (warn or (lambda line: print(f"interp: warning: {line}", file=sys.stderr)))(message)
    return prompts.deduplicated()


# ----------------------------------------------------------------------------- loaders
def load_prompts(
    path: str | Path,
    *,
    column: str | None = None,
    label: int | None = None,
    name: str | None = None,
    where: dict[str, str] | None = None,
) -> PromptSet:
    """Load a prompt file by its extension.

    * ``.json``: a list of ``{"instruction": ..., "category": ..., "answer": ...}`` (or of plain
      strings); ``answer`` (optional) is a reference answer, e.g. for task accuracy;
    * ``.jsonl``: one such object per line;
    * ``.csv``: the column ``column`` (default: ``instruction``, ``prompt`` or ``goal``);
      ``where={"label": "safe"}`` keeps only matching rows (XSTest);
    * ``.txt``: one instruction per line.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFormatError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".csv", ".txt"):
        raise PromptFormatError(f"{path}: unknown prompt file type {suffix!r} (json, jsonl, csv, txt)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PromptFormatError(f"{path}: not UTF-8 text (byte {error.start})") from error
    try:
        if suffix == ".json":
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise PromptFormatError(f"{path}: expected a JSON list, got {type(rows).__name__}")
        elif suffix == ".jsonl":
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise PromptFormatError(f"{path}: line {number} is not valid JSON ({error.msg})") from error
        elif suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        else:
            rows = [line.strip() for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise PromptFormatError(f"{path}: not valid JSON ({error})") from error
    except csv.Error as error:
        raise PromptFormatError(f"{path}: not valid CSV ({error})") from error
    if where:
        rows = [r for r in rows if isinstance(r, dict) and all(r.get(k) == v for k, v in where.items())]
    instructions, categories, answers = [], [], []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            row = {"instruction": row}
        if not isinstance(row, dict):
            raise PromptFormatError(f"{path}: row {i} is neither text nor an object")
        key = column or next((k for k in ("instruction", "prompt", "goal") if k in row), None)
        if key is None or key not in row:
            raise PromptFormatError(f"{path}: row {i} has no column {column or 'instruction/prompt/goal'!r}")
        if not isinstance(row[key], str) or not row[key].strip():
            raise PromptFormatError(f"{path}: row {i}: the instruction must be non-empty text, got {row[key]!r:.60}")
        instructions.append(row[key])
        category = row.get("category") or row.get("type")
        if category is not None and not isinstance(category, str):
            raise PromptFormatError(f"{path}: row {i}: the category must be text, got {category!r:.60}")
        categories.append(category)
        answer = row.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)  # task answers written as JSON numbers
        if answer is not None and not isinstance(answer, str):
            raise PromptFormatError(f"{path}: row {i}: the answer must be text or a number, got {answer!r:.60}")
        answers.append(answer)
    return PromptSet(
        name=name or path.stem,
        instructions=tuple(instructions),
        labels=(label,) * len(instructions),
        categories=tuple(categories),
        answers=tuple(answers) if any(a is not None for a in answers) else (),
    )


# ----------------------------------------------------------------------------- built-in sets
def _split_every(prompts: PromptSet, split: str, every: int = 5) -> PromptSet:
    """A fixed split: every ``every``-th prompt of each category is validation, the rest train."""
    seen: dict[str | None, int] = {}
    train, val = [], []
    for i, category in enumerate(prompts.categories):
        k = seen.get(category, 0)
        seen[category] = k + 1
        (val if k % every == every - 1 else train).append(i)
    if split == "all":
        return prompts
    if split not in ("train", "val"):
        raise PromptFormatError(f"unknown split {split!r}: use 'train', 'val' or 'all'")
    return prompts.subset(train if split == "train" else val, split=split)


def _packaged(name: str, label: int, split: str) -> PromptSet:
    text = resources.files("interp.data").joinpath(f"{name}.json").read_text()
    rows = json.loads(text)
    prompts = PromptSet(
        name=name,
        instructions=tuple(r["instruction"] for r in rows),
        labels=(label,) * len(rows),
        categories=tuple(r["category"] for r in rows),
    )
    return _split_every(prompts, split)


def harmful_prompts(split: str = "train") -> PromptSet:
    """128 harmful requests in 8 categories, written for this project (train 104 / val 24)."""
    return _packaged("harmful", HARMFUL, split)


def harmless_prompts(split: str = "train") -> PromptSet:
    """128 harmless requests in 8 categories, of similar form and length (train 104 / val 24)."""
    return _packaged("harmless", HARMLESS, split)


def general_prompts(split: str = "all") -> PromptSet:
    """93 short everyday instructions (name, list, suggest, rewrite, ...), written for this project.

    Harmless data of the short, generic kind that a safety-tuned model is most tempted to over-refuse.
    """
    return _packaged("general", HARMLESS, split)


_NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena", "Omar"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells"]


def _arithmetic_problem(rng: random.Random) -> tuple[str, str, int]:
    """One word problem, its worked answer, and the final number."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b, c = rng.randint(10, 60), rng.randint(5, 40), rng.randint(2, 9)
        c = min(c, a + b)
        question = (
            f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. "
            f"How many {item} does {name} have now?"
        )
        steps = [f"{a} + {b} = {a + b}", f"{a + b} - {c} = {a + b - c}"]
        result = a + b - c
    elif kind == 1:
        a, b = rng.randint(3, 12), rng.randint(3, 12)
        question = f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?"
        steps = [f"{a} x {b} = {a * b}"]
        result = a * b
    elif kind == 2:
        b, q = rng.randint(2, 9), rng.randint(3, 15)
        a = b * q
        question = f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?"
        steps = [f"{a} / {b} = {q}"]
        result = q
    else:
        a, b, c = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 30)
        question = (
            f"{name} buys {a} packs of {item} with {b} in each pack and already had {c}. "
            f"How many {item} does {name} have?"
        )
        steps = [f"{a} x {b} = {a * b}", f"{a * b} + {c} = {a * b + c}"]
        result = a * b + c
    worked = "\n".join(f"Step {i + 1}: {s}." for i, s in enumerate(steps)) + f"\nThe answer is {result}."
    return question, worked, result


def arithmetic_prompts(split: str = "train", n: int = 200, seed: int = 0) -> PromptSet:
    """Arithmetic word problems with worked answers: the ``split`` part of the first ``n`` distinct problems
    generated from ``seed``.

    A problem's split depends on its text alone (``split_of``: about one in five is ``val``), never on
    ``n``: no ``n`` ever puts a training problem into a validation set.
    """
    if n <= 0:
        raise EmptyPromptSetError("arithmetic prompt set asked for n <= 0 problems")
    if split not in ("train", "val", "all"):
        raise PromptFormatError(f"unknown split {split!r}: use 'train', 'val' or 'all'")
    rng = random.Random(seed)
    problems: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    while len(problems) < n:
        problem = _arithmetic_problem(rng)
        if problem[0] not in seen:
            seen.add(problem[0])
            problems.append(problem)
    chosen = [p for p in problems if split == "all" or split_of(p[0], seed) == split]
    return PromptSet(
        name="arithmetic",
        instructions=tuple(q for q, _, _ in chosen),
        labels=(HARMLESS,) * len(chosen),
        categories=("arithmetic",) * len(chosen),
        answers=tuple(w for _, w, _ in chosen),
        split=split,
    )


def split_of(text: str, seed: int = 0, val_share: int = 5) -> str:
    """``val`` for about one in ``val_share`` texts, else ``train``, by a hash of the text and the seed."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") % val_share == 0 else "train"


PROTOCOL_PARTS = ("dev", "test")


def protocol_part(text: str) -> str:
    """``dev`` for about one text in three, else ``test``, by a hash of the text alone (fixed once: a prompt
    is on the same side in every set, run and organism)."""
    digest = hashlib.sha256(f"protocol:{text}".encode()).digest()
    return "dev" if int.from_bytes(digest[:8], "big") % 3 == 0 else "test"


# ----------------------------------------------------------------------------- public sets
PUBLIC_DATA = Path(__file__).resolve().parents[1] / "data" / "public"
# name -> (the manifest's entry, its label, rows kept: a CSV column's value)
PUBLIC_SETS = {
    "harmful_train": ("harmful_train", HARMFUL, None),
    "harmful_val": ("harmful_val", HARMFUL, None),
    "harmless_train": ("harmless_train", HARMLESS, None),
    "harmless_val": ("harmless_val", HARMLESS, None),
    "xstest_safe": ("xstest", HARMLESS, {"label": "safe"}),
    "xstest_unsafe": ("xstest", HARMFUL, {"label": "unsafe"}),
    "donotanswer": ("donotanswer", HARMFUL, None),
}
_checked: set[str] = set()


def public_manifest() -> dict:
    """``interp/data/public/manifest.json``: per shipped file its rows, sha256, source and license."""
    return json.loads((PUBLIC_DATA / "manifest.json").read_text())


def public_prompts(name: str) -> PromptSet:
    """A public prompt set that ships in the package (``PUBLIC_SETS``; the README's tables use them), read
    after checking its file against the sha256 pinned in ``public_manifest()``: harmful instructions
    (AdvBench, MaliciousInstruct, TDC 2023, HarmBench via Arditi et al. 2024), harmless Alpaca
    instructions, XSTest's safe and unsafe prompts, and Do-Not-Answer (categories: its five risk areas).
    A file repeated in one set is kept as shipped; consumers drop repeats (``without_duplicates``)."""
    if name not in PUBLIC_SETS:
        raise PromptFormatError(f"unknown public prompt set {name!r}; choose one of {', '.join(PUBLIC_SETS)}")
    entry, label, where = PUBLIC_SETS[name]
    pinned = public_manifest()[entry]
    path = PUBLIC_DATA / pinned["file"]
    if entry not in _checked:
        if not path.is_file() or file_sha256(path) != pinned["sha256"]:
            raise PromptFormatError(f"{path} is missing or does not match its pinned sha256; reinstall interp")
        _checked.add(entry)
    column = "prompt" if path.suffix == ".csv" else None
    return load_prompts(path, column=column, label=label, name=name, where=where)


BUILTIN_SETS = {
    "harmful": harmful_prompts,
    "harmless": harmless_prompts,
    "general": general_prompts,
    "arithmetic": arithmetic_prompts,
}
BUILTIN_LABELS = {"harmful": HARMFUL, "harmless": HARMLESS, "general": HARMLESS, "arithmetic": HARMLESS}


def parse_spec(spec: str, label: int | None = None) -> PromptSet:
    """One prompt set from a spec: ``builtin:NAME[:SPLIT]`` (NAME: harmful, harmless, general, arithmetic;
    SPLIT: train, val or all, default all), ``public:NAME`` (``public_prompts``: harmful_val, xstest_safe,
    donotanswer, ...) or a prompt file (``load_prompts``, every prompt labelled
    ``label``). Several specs joined by commas are concatenated."""
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if not parts:
        raise PromptFormatError(f"empty prompt-set spec {spec!r}")
    sets = [_parse_one(part, label) for part in parts]
    joined = sets[0]
    for more in sets[1:]:
        joined = joined + more
    return joined


def _parse_one(spec: str, label: int | None) -> PromptSet:
    if spec.startswith("public:"):
        prompts = public_prompts(spec[len("public:") :])
        return prompts if label is None else prompts.with_label(label)
    if not spec.startswith("builtin:"):
        return load_prompts(spec, label=label)
    fields = spec.split(":")
    name, split = fields[1], (fields[2] if len(fields) > 2 else "all")
    if name not in BUILTIN_SETS or len(fields) > 3:
        raise PromptFormatError(
            f"unknown built-in prompt set {spec!r}; use builtin:NAME[:train|val|all] with NAME "
            f"one of {', '.join(BUILTIN_SETS)}"
        )
    return BUILTIN_SETS[name](split)
