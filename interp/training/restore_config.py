"""What a restoration is asked to do (``interp.training.restore`` trains it): its settings (``RestoreConfig``),
the named recipes (``PRESETS``) and where LoRA sits and hidden states are aligned (``Placement``).

* teachers (``TEACHERS``): ``base`` (the aligned model, same prompt) or ``reminder`` (the fine-tuned model
  with the adapters off and ``reminder`` appended to the user turn); distances (``DISTANCES``): ``l2`` or
  ``cosine``. The losses they enter, the schedule that ``schedule_span``, ``retain_scale`` and
  ``loss_scale`` shape, and how a longer teacher prompt is aligned: ``interp.training.restore_losses``.
* adapters: LoRA of rank ``rank``, scale ``alpha`` and dropout ``dropout`` on the map's target modules.
  Rank and alpha are restoration settings (``RestoreConfig``); the layer map only suggests them. With
  dropout > 0 a placement trained in lockstep draws different dropout masks than trained alone.
* presets (``PRESETS``): ``safereact`` is the released SafeReAct recipe (``Preset``'s docstring);
  ``reasoning-answer`` restores a reasoning model's final answer with its trace closed
  (``interp.training.answer_restore``: LoRA on every block, lr 1e-3, 96 steps, the base's first 8 answer
  tokens aligned with next-token KL weight 5; chosen on the reasoning organism's dev parts).
* alignment layers: a placement's own (the layer map's), or the paper's every 5th layer and the last
  (``paper_alignment_layers``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.chat import SAFEREACT_REMINDER, SAFETY_REMINDER
from ..errors import ConfigError
from ..measures.layer_map import LayerMap

TEACHERS = ("base", "reminder")
DISTANCES = ("l2", "cosine")
BEFORE_ANSWER = ("free", "finetuned")


@dataclass(frozen=True)
class RestoreConfig:
    steps: int = 24  # chosen on the selection suite (analyses/restore_trials.py): no more is distinguishable
    lr: float = 3e-3
    batch_size: int = 8
    teacher: str = "base"
    distance: str = "l2"
    retain_scale: float = 1.0
    reminder: str = SAFETY_REMINDER
    rank: int = 8
    alpha: int = 16
    seed: int = 0
    dropout: float = 0.0  # LoRA dropout
    loss_scale: float = 1.0  # multiplies the whole loss (SafeReAct's lorra_alpha)
    schedule_span: float = 2.0  # the weights move linearly over span x steps (interp.training.restore_losses)
    # text after each rendered harmful prompt, for student and teacher alike (e.g. a closed reasoning trace,
    # "<think>" ... "</think>", so that the answer after it is what is aligned)
    harmful_prefill: str = ""
    safety_positions: int = 0  # > 0: the safety loss reads only the last n positions of each harmful input
    # with safety_positions: the harmful input's earlier positions are left free, or held at the frozen
    # fine-tuned model's states (interp.training.restore_losses)
    before_answer: str = "free"
    # with safety_positions: > 0 adds this weight times the next-token KL to the teacher at those positions
    answer_kl: float = 0.0
    # each harmful prompt's own answer (PromptSet.answers, e.g. the teacher's first words) follows the
    # prefill for student and teacher alike; with safety_positions its tokens are aligned too
    harmful_answers: bool = False

    ADDED_LATER = {"dropout": 0.0, "loss_scale": 1.0, "schedule_span": 2.0, "harmful_prefill": "",
                   "safety_positions": 0, "before_answer": "free", "answer_kl": 0.0,
                   "harmful_answers": False}  # fmt: skip

    def key(self) -> dict:
        """The settings that identify a trained adapter: every field, except fields added after the
        adapter cache's version 2 while they hold their defaults (adapters cached before stay valid)."""
        return {k: v for k, v in asdict(self).items() if self.ADDED_LATER.get(k, object()) != v}

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0 or not self.loss_scale > 0 or not self.schedule_span >= 1.0:
            raise ConfigError("RestoreConfig: dropout must be in [0, 1), loss_scale > 0 and schedule_span >= 1")
        if self.rank < 1 or self.alpha < 1:
            raise ConfigError(f"RestoreConfig: rank and alpha must be >= 1, got {self.rank} and {self.alpha}")
        if self.teacher not in TEACHERS:
            raise ConfigError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if self.distance not in DISTANCES:
            raise ConfigError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.safety_positions < 0:
            raise ConfigError(f"RestoreConfig: safety_positions must be >= 0, got {self.safety_positions}")
        if self.before_answer not in BEFORE_ANSWER:
            raise ConfigError(f"RestoreConfig: before_answer must be in {BEFORE_ANSWER}, got {self.before_answer!r}")
        if self.before_answer != "free" and not self.safety_positions:
            raise ConfigError("RestoreConfig: before_answer needs safety_positions > 0 (the answer's positions)")
        if self.harmful_answers and not self.safety_positions:
            raise ConfigError("RestoreConfig: harmful_answers needs safety_positions > 0 (where the answer starts)")
        if not self.answer_kl >= 0 or (self.answer_kl and not self.safety_positions):
            raise ConfigError("RestoreConfig: answer_kl must be >= 0, and > 0 needs safety_positions > 0")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0 or self.retain_scale < 0:
            raise ConfigError("RestoreConfig: steps and batch_size must be >= 1, lr > 0, retain_scale >= 0")


def paper_alignment_layers(n_layers: int) -> list[int]:
    """Every 5th layer and the last (0-based: 4, 9, 14, ..., n_layers - 1)."""
    return sorted(set(range(4, n_layers, 5)) | {n_layers - 1})


@dataclass(frozen=True)
class Preset:
    """A named restoration recipe: its settings, and where LoRA sits and hidden states are aligned.

    ``safereact``, the released code's recipe (homles11/SafeReAct: ``R17B.sh``,
    ``src/lorra_safereact_twomodel.py``): LoRA r16, alpha 16, dropout 0.05 on q/k/v/o/gate/up/down of every
    layer; L2 alignment at every 5th layer and the last; the teacher is the fine-tuned model with the
    adapters off and the released safety reminder (``SAFEREACT_REMINDER``) in the prompt; L2 retain on
    every layer against the adapters-off model; weights ``10 (1 - t/1.5T)`` and ``10 t/1.5T``; 400 steps,
    lr 2e-5, batch 16, seed 42. Where it differs from the release: the reminder ends the user turn rather
    than preceding the assistant tag; the released loss layers are hidden-state indices 5, 10, ..., 27 of a
    28-layer model (block outputs 4, 9, ..., 24, 26), here block outputs 4, 9, ... and the last block; the
    released teacher may be a pruned copy of the model; bf16, ZeRO-1 and gradient checkpointing are not
    reproduced (``interp`` trains in the models' dtype; ZeRO's role is FSDP's here: ``interp.training.restore``'s
    docstring)."""

    name: str
    config: RestoreConfig
    every_layer: bool  # LoRA on every layer (else on the layer map's entries)
    paper_alignment: bool  # align at every 5th layer and the last (else at the layer map's alignment layers)
    # > 0: the reasoning-answer recipe (interp.training.answer_restore): align the final answer after the
    # fine-tuned model's own closed trace, along the base's first answer_words tokens, with this KL weight
    answer_words: int = 0
    answer_kl: float = 0.0

    def placement(self, layer_map: LayerMap) -> tuple[list[int] | None, list[int] | None]:
        """``(layers, alignment)`` for ``restore``: ``None`` keeps the layer map's."""
        n = layer_map.n_layers
        return (
            list(range(n)) if self.every_layer else None,
            paper_alignment_layers(n) if self.paper_alignment else None,
        )


PRESETS = {
    "safereact": Preset(
        "safereact",
        RestoreConfig(
            steps=400,
            lr=2e-5,
            batch_size=16,
            teacher="reminder",
            reminder=SAFEREACT_REMINDER,
            rank=16,
            alpha=16,
            dropout=0.05,
            loss_scale=10.0,
            schedule_span=1.5,
            seed=42,
        ),
        every_layer=True,
        paper_alignment=True,
    ),
    "reasoning-answer": Preset(
        "reasoning-answer",
        RestoreConfig(steps=96, lr=1e-3),
        every_layer=True,
        paper_alignment=False,
        answer_words=8,
        answer_kl=5.0,
    ),
}


@dataclass(frozen=True)
class Placement:
    """Where one restoration puts LoRA (``layers``) and where it aligns hidden states (``alignment``).
    ``modules`` (layer, module names) narrows LoRA to those modules of each layer (a version 2 layer
    map's entries); empty: every target module of each layer (whole blocks). ``lr`` gives the placement
    a learning rate of its own (each plan at its tuned lr, trained in lockstep with the others)."""

    layers: tuple[int, ...]
    alignment: tuple[int, ...]
    modules: tuple[tuple[int, tuple[str, ...]], ...] = ()
    lr: float | None = None  # this placement's learning rate (None: the config's)

    @property
    def start(self) -> int:
        """The lowest LoRA layer: below it the student's residual stream is the fine-tuned model's."""
        return min(self.layers)
