"""Causal checks: per-layer interventions on the residual stream and their effect on the refusal score.

The score is the logit refusal score of ``interp.core.generate`` (log-odds that the next token begins a
refusal, at the last prompt position), averaged over harmful prompts. Interventions act on the residual
stream after block ``l`` (``interp.core.bridge``), at every position:

* ``add``: the base refusal vector (difference in means) added to the fine-tuned model;
* ``ablate``: the base refusal direction removed from the base model (``x - (x.u)u``);
* ``patch``: the base model's residual put into the fine-tuned model.

Each gives a per-layer effect: ``add_effect = score(ft + v) - score(ft)``, ``ablate_effect =
score(base) - score(base - u)``, ``patch_effect = score(ft <- base) - score(ft)``. The patch effect is also
kept per prompt (``patch_by_prompt``), so an interval over prompts can be put on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.bridge import Edit, ablate_direction, add_vector, block_outputs, last_logits, resume_after
from ..core.chat import ChatFormat, batches
from ..core.generate import Request, behaviour, generate_many, refusal_scores
from ..core.judge import Behaviour, refusal_log_odds
from ..core.kvcache import SharedPrefix, after_prefix, run_prefix, shared_length
from ..core.models import LoadedModel
from ..core.prompts import PromptSet
from ..distributed import split, sum_array
from ..errors import ConfigError
from ..io.hashing import stable_hash

EFFECTS = ("add_effect", "ablate_effect", "patch_effect")


@dataclass
class CausalSweep:
    """Per-layer effects on the mean refusal score of harmful prompts (module docstring).

    ``add_effect``, ``ablate_effect``, ``patch_effect`` are ``[layer]`` arrays with NaN at layers not
    swept; ``score_base`` / ``score_finetuned`` are the unmodified mean scores; ``patch_by_prompt`` is
    ``[prompt, layer]``, each prompt's patch effect (NaN at layers not swept; None in sweeps saved before
    it was kept).
    """

    layers: list[int]
    add_effect: np.ndarray
    ablate_effect: np.ndarray
    patch_effect: np.ndarray
    score_base: float
    score_finetuned: float
    refusal_tokens: list[int]
    patch_by_prompt: np.ndarray | None = None

    @property
    def best_add_layer(self) -> int:
        """The layer where adding the base refusal vector raises the fine-tuned model's score most."""
        return int(np.nanargmax(self.add_effect))

    def effects(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in EFFECTS}

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in EFFECTS:
            out[name] = [None if not np.isfinite(x) else float(x) for x in getattr(self, name)]
        if self.patch_by_prompt is not None:
            out["patch_by_prompt"] = [
                [None if not np.isfinite(x) else float(x) for x in row] for row in self.patch_by_prompt
            ]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CausalSweep:
        effects = {name: np.array([np.nan if x is None else x for x in data[name]], dtype=float) for name in EFFECTS}
        if data.get("patch_by_prompt") is not None:
            rows = data["patch_by_prompt"]
            effects["patch_by_prompt"] = np.array([[np.nan if x is None else x for x in r] for r in rows], dtype=float)
        return cls(**{**data, **effects})


def steering_edits(layer: int, vector, scale: float = 1.0) -> dict[int, Edit]:
    """Residual-stream edits that add ``scale * vector`` after block ``layer`` (for ``generate``)."""
    return {layer: add_vector(torch.as_tensor(np.asarray(vector), dtype=torch.float32) * scale)}


def steering_key(layer: int, vector, scale: float = 1.0) -> str:
    """Identifies ``steering_edits(layer, vector, scale)`` for the answer cache."""
    return "steer:" + stable_hash([layer, np.asarray(vector, dtype=np.float32).tobytes().hex(), float(scale)])


def steered_behaviour(
    model: LoadedModel, prompts: PromptSet, layer: int, vector, scale: float = 1.0, **kwargs
) -> Behaviour:
    """Greedy answers with the refusal vector added at ``layer``, judged like any other answers."""
    edits = {"edits": steering_edits(layer, vector, scale), "edits_key": steering_key(layer, vector, scale)}
    return behaviour(model, prompts, **edits, **kwargs)


def causal_sweep(
    base: LoadedModel,
    finetuned: LoadedModel,
    harmful: PromptSet,
    refusal_vectors: np.ndarray,
    token_ids: Sequence[int],
    *,
    layers: Sequence[int] | None = None,
    chat: ChatFormat = ChatFormat(),
    batch_size: int = 32,
    progress: bool = True,
) -> CausalSweep:
    """``refusal_vectors[layer, d_model]`` are the base model's difference-in-means refusal vectors."""
    n_layers = finetuned.n_layers
    layers = list(range(n_layers)) if layers is None else list(layers)
    if refusal_vectors.shape[0] != n_layers:
        raise ConfigError(f"{refusal_vectors.shape[0]} refusal vectors for a model with {n_layers} layers")
    vectors = torch.tensor(refusal_vectors, dtype=torch.float32)
    units = vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def score(model: LoadedModel) -> np.ndarray:
        return refusal_scores(model, harmful, token_ids, chat=chat, batch_size=batch_size).numpy().astype(float)

    ft_by_prompt = score(finetuned)
    ft_score, base_score = float(ft_by_prompt.mean()), float(score(base).mean())
    # Each intervention resumes from the unmodified residual stream after its block: the blocks below it
    # do not run again (exact: they would compute the same tensor). The prompts' shared prefix (the
    # system turn) runs once per model, and once per intervention for the blocks after the edit.
    totals = {name: np.zeros(n_layers) for name in EFFECTS}
    seqs = chat.encode(base.tokenizer, harmful.instructions)
    patched = np.zeros((len(seqs), n_layers))  # [prompt, layer]: log-odds with the base residual patched in
    shared = seqs[0][: shared_length(seqs)]
    points = [(layer, "resid_post") for layer in layers]
    pad = base.tokenizer.pad_token_id
    with torch.no_grad():
        prefix = {"ft": run_prefix(finetuned.hf, shared, points), "base": run_prefix(base.hf, shared, points)}
        edited: dict[tuple[str, int], SharedPrefix] = {}  # the prefix with each intervention, from its block on
        mine = split(list(batches(seqs, batch_size, pad)))  # this process's batches
        for batch in tqdm(mine, desc="causal sweep", disable=not progress):
            rows = [seqs[i] for i in batch.index]
            resid = {}  # each model's unmodified residual stream after the swept blocks, [batch, rest, d_model]
            for role, model in (("ft", finetuned), ("base", base)):
                inputs = after_prefix(rows, prefix[role], pad, model.device)
                resid[role] = dict(zip(layers, block_outputs(model.hf, inputs, layers)))
            for layer in layers:
                runs = {  # name: (model, its prefix, the residual it resumes from, the edit)
                    "add_effect": (finetuned, "ft", "ft", add_vector(vectors[layer])),
                    "ablate_effect": (base, "base", "base", ablate_direction(units[layer])),
                    "patch_effect": (finetuned, "ft", "base", lambda x: x),
                }
                for name, (model, own, source, edit) in runs.items():
                    if (name, layer) not in edited:
                        entering = edit(prefix[source].outputs[layer, "resid_post"])
                        edited[name, layer] = run_prefix(
                            model.hf, shared, start=layer + 1, below=prefix[own], entering=entering
                        )
                    inputs = after_prefix(rows, edited[name, layer], pad, model.device)
                    with resume_after(model.hf, layer, edit(resid[source][layer])):
                        logprobs = torch.log_softmax(last_logits(model.hf, inputs), -1)
                    odds = refusal_log_odds(logprobs, token_ids).float().cpu().numpy()
                    totals[name][layer] += float(odds.sum())
                    if name == "patch_effect":
                        patched[batch.index, layer] = odds
    totals = dict(zip(EFFECTS, sum_array(np.stack([totals[name] for name in EFFECTS]))))  # all processes' prompts
    patched = sum_array(patched)  # each process filled its own prompts' rows
    effects = {name: np.full(n_layers, np.nan) for name in EFFECTS}
    for layer in layers:
        effects["add_effect"][layer] = totals["add_effect"][layer] / len(seqs) - ft_score
        effects["ablate_effect"][layer] = base_score - totals["ablate_effect"][layer] / len(seqs)
        effects["patch_effect"][layer] = totals["patch_effect"][layer] / len(seqs) - ft_score
    by_prompt = np.full((len(seqs), n_layers), np.nan)
    by_prompt[:, layers] = patched[:, layers] - ft_by_prompt[:, None]
    return CausalSweep(
        layers=layers,
        **effects,
        score_base=base_score,
        score_finetuned=ft_score,
        refusal_tokens=[int(t) for t in token_ids],
        patch_by_prompt=by_prompt,
    )


@dataclass
class SteeringCheck:
    """The behavioural check of the best add layer: refusal rates of the fine-tuned model's greedy answers
    without and with ``scale`` times the base refusal vector added there."""

    layer: int
    n_harmful: int
    n_harmless: int
    finetuned_harmful_refusal: float
    finetuned_harmless_refusal: float
    steered: list[dict]  # {"scale", "harmful_refusal", "harmless_refusal", "examples"} per scale

    def to_dict(self) -> dict:
        return asdict(self)


def steering_check(
    finetuned: LoadedModel,
    harmful: PromptSet,
    harmless: PromptSet,
    layer: int,
    vector,
    scales: Sequence[float],
    *,
    log=print,
    **gen,
) -> SteeringCheck:
    """Generate with ``scale * vector`` added after block ``layer`` for each scale (``generate`` options in
    ``gen``) and judge the answers."""
    budget = gen.pop("max_new_tokens", 48)
    requests = [Request(p, budget, stop_at_refusal=True) for p in (harmful, harmless)]

    def judged(**edits) -> tuple[Behaviour, Behaviour]:
        answers = generate_many(finetuned, requests, **edits, **gen)
        return Behaviour(harmful, answers[0].answers), Behaviour(harmless, answers[1].answers)

    plain_h, plain_n = judged()
    steered = []
    for scale in scales:
        steered_h, steered_n = judged(
            edits=steering_edits(layer, vector, scale), edits_key=steering_key(layer, vector, scale)
        )
        steered.append(
            {
                "scale": scale,
                "harmful_refusal": steered_h.refusal_rate,
                "harmless_refusal": steered_n.refusal_rate,
                "examples": steered_h.examples(3),
            }
        )
        log(
            f"steering at layer {layer} x{scale}: harmful refusal {plain_h.refusal_rate:.0%} -> "
            f"{steered_h.refusal_rate:.0%}, harmless {plain_n.refusal_rate:.0%} -> {steered_n.refusal_rate:.0%}"
        )
    return SteeringCheck(layer, len(harmful), len(harmless), plain_h.refusal_rate, plain_n.refusal_rate, steered)
