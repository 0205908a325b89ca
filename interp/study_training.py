"""Training the study's plans (``train_plans``): each plan restores the fine-tuned model, and the plans
not in the cache train together, in lockstep.

Trained adapters are cached (keyed by both models' weights, the plan, the config and the prompts), so a
rerun reloads them and reports the training time of the run that trained them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .core.chat import ChatFormat
from .core.models import LoadedModel, ModelPair
from .core.prompts import PromptSet
from .evaluation.table import Candidate
from .io.atomic import atomic_dir, atomic_write_json
from .io.cache import cache_root, intact_entry
from .io.hashing import stable_hash
from .measures.layer_map import LayerMap
from .study_plans import Plan
from .training.lora import apply_adapter, save_adapter
from .training.restore import RestoreStats, restore_many
from .training.restore_config import RestoreConfig

RESTORE_CACHE_VERSION = 2  # 2: hidden states are block outputs (before the final norm) at every layer


@dataclass
class Restored:
    plan: Plan
    model: LoadedModel  # the fine-tuned model with the adapter merged in (plain HF)
    stats: RestoreStats
    adapter: Path  # the adapter in peft's format
    cached: bool
    checkpoints: dict[int, Path] = field(default_factory=dict)  # step -> the adapter after that many steps

    def candidate(self, seconds: float | None = None, **info) -> Candidate:
        """This restoration as a row of the evaluation table; ``seconds`` is its training time (default
        ``stats.seconds``), ``info`` is reported beside its layers."""
        return Candidate(
            self.plan.name,
            self.model,
            trainable_params=self.stats.trainable_params,
            train_seconds=self.stats.seconds if seconds is None else seconds,
            plan=self.plan.key,
            info={"layers": list(self.plan.layers), **info},
        )


def _restoration_folder(
    plan: Plan, pair: ModelPair, layer_map: LayerMap, harmful, retain, config, chat, checkpoints: Sequence[int] = ()
) -> Path:
    """Where ``plan``'s trained adapter is cached: keyed by both models' weights, the plan, the settings,
    the prompts, the chat format and the checkpoints kept."""
    key = stable_hash(
        [
            pair.base.fingerprint,
            pair.finetuned.fingerprint,
            plan.layers,
            plan.alignment,
            *([plan.modules] if plan.modules else []),  # whole-block plans keep their earlier keys
            *([plan.lr] if plan.lr is not None else []),  # as do plans at the config's lr
            config.key(),
            harmful.hash,
            retain.hash,
            layer_map.target_modules,
            chat.system_prompt,
            chat.user_suffix,
            RESTORE_CACHE_VERSION,
            *([sorted(checkpoints)] if checkpoints else []),  # (plans without checkpoints keep their keys)
        ]
    )
    return cache_root() / "restorations" / key


def train_plans(
    plans: Sequence[Plan],
    pair: ModelPair,
    layer_map: LayerMap,
    harmful: PromptSet,
    retain: PromptSet,
    config: RestoreConfig,
    *,
    chat: ChatFormat = ChatFormat(),
    cache: bool = True,
    progress: bool = True,
    checkpoints: Sequence[int] = (),
) -> list[Restored]:
    """Restore the fine-tuned model with every plan and merge each adapter into a copy of its weights.

    Cached adapters are reloaded; the plans not in the cache train together, in lockstep
    (``restore_many``: same batches, shared teacher and frozen passes). ``checkpoints``: steps after
    which each adapter is kept too (``Restored.checkpoints``: a strength sweep from one run)."""
    folders = [_restoration_folder(plan, pair, layer_map, harmful, retain, config, chat, checkpoints) for plan in plans]
    # Plans not in the cache, each distinct adapter once (two plans on the same layers share it).
    missing: list[int] = []
    for i, folder in enumerate(folders):
        if not (cache and intact_entry(folder, "stats.json")) and folder not in {folders[j] for j in missing}:
            missing.append(i)
    trained = dict(
        zip(
            missing,
            restore_many(
                pair.finetuned,
                layer_map,
                harmful,
                retain,
                [plans[i].placement for i in missing],
                config,
                base=pair.base if config.teacher == "base" else None,
                chat=chat,
                checkpoints=checkpoints,
                progress=progress,
            )
            if missing
            else [],
        )
    )
    for i in trained:
        with atomic_dir(folders[i], marker="stats.json", checksums=True) as tmp:
            save_adapter(trained[i].peft_model, tmp / "adapter", trained_on=pair.finetuned.fingerprint)
            for step in checkpoints:
                kept = trained[i].peft_at(step, pair.finetuned)
                save_adapter(kept, tmp / f"checkpoint-{step}", trained_on=pair.finetuned.fingerprint)
            atomic_write_json(tmp / "stats.json", trained[i].stats.to_dict())
    restored = []
    for i, (plan, folder) in enumerate(zip(plans, folders)):
        if i in trained:
            stats = trained[i].stats
            model = trained[i].merged(pair.finetuned, name=plan.name)  # the student's own copy of the weights
        else:
            stats = RestoreStats.from_dict(json.loads((folder / "stats.json").read_text()))
            student = replace(pair.finetuned, hf=copy.deepcopy(pair.finetuned.hf))
            model = apply_adapter(student, folder / "adapter", name=plan.name)
        trained_now = any(folders[j] == folder for j in trained)
        kept = {step: folder / f"checkpoint-{step}" for step in checkpoints}
        restored.append(Restored(plan, model, stats, folder / "adapter", cached=not trained_now, checkpoints=kept))
    return restored
