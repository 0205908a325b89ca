"""What the analysis hands to every later stage: one typed ``AnalysisResult`` with ``save`` / ``load``.

Folder layout (``save``)::

    layer_map.json          the ranked layer map (``LayerMap``): whole blocks
    component_map.json      the same map on the top-ranked components (when they were measured)
    metrics.json            per-layer metrics (at every captured position), the causal sweep, the component
                            attribution, the direction selection, the steering check, the layer score's
                            spread over prompt resamples, settings, timings
    analysis.safetensors    base refusal vectors [layer, d_model] and the PCA projection
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..io.atomic import atomic_path, atomic_write_json
from .causal import CausalSweep, SteeringCheck
from .compare import PairMetrics
from .components import ComponentAttribution
from .layer_map import LayerMap, ScoreSpread
from .positions import DirectionSelection, PositionMetrics

RESULT_VERSION = 2  # 2: positions, components, direction selection, component map
READABLE_RESULTS = (1, 2)


@dataclass
class Projection:
    """Harmful and harmless prompts at ``layer`` projected on the base's top two principal components:
    ``base`` and ``finetuned`` ``[sample, 2]``, ``labels`` ``[sample]`` (1 harmful)."""

    layer: int
    base: np.ndarray
    finetuned: np.ndarray
    labels: np.ndarray


@dataclass
class AnalysisResult:
    """Per-layer metrics, the causal sweep, the layer map, the base refusal vectors and the PCA view."""

    metrics: PairMetrics
    sweep: CausalSweep
    layer_map: LayerMap
    refusal_vectors: np.ndarray  # [layer, d_model]: the base's difference-in-means vectors (last position)
    pca: Projection
    steering: SteeringCheck | None = None
    positions: PositionMetrics | None = None  # every metric at every captured position (``metrics``: the last)
    selection: DirectionSelection | None = None  # the refusal direction chosen over (layer, position)
    components: ComponentAttribution | None = None  # attention vs MLP, per layer
    component_map: LayerMap | None = None  # the layer map on the top-ranked components
    spread: ScoreSpread | None = None  # the layer score's interval and top-k share over prompt resamples
    config: dict = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)  # name, size and hash of every prompt set used
    seconds: dict = field(default_factory=dict)

    @property
    def refusal_tokens(self) -> list[int]:
        return self.sweep.refusal_tokens

    @property
    def steer_layer(self) -> int:
        """The best layer to add the base refusal vector at (largest ``add_effect``)."""
        return self.sweep.best_add_layer

    def steering_direction(self) -> tuple[int, np.ndarray, str]:
        """The steering baseline's ``(layer, vector, where)``: the refusal direction selected over (layer,
        position) as Arditi et al. do (``selection``), added after its block; without a selection, the
        last-position vector at ``steer_layer``."""
        if self.selection is not None and self.selection.vector is not None:
            layer, position = self.selection.selected_layer, self.selection.selected_position
            return layer, self.selection.vector, f"selected direction: layer {layer}, position {position}"
        return self.steer_layer, self.refusal_vectors[self.steer_layer], f"layer {self.steer_layer}"

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "refusal_vectors": self.refusal_vectors,
            "pca_base": self.pca.base,
            "pca_finetuned": self.pca.finetuned,
            "pca_labels": self.pca.labels,
        }
        with atomic_path(folder / "analysis.safetensors") as tmp:
            save_file({k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in tensors.items()}, str(tmp))
        self.layer_map.save(folder / "layer_map.json")
        if self.component_map is not None:
            self.component_map.save(folder / "component_map.json")
        atomic_write_json(
            folder / "metrics.json",
            {
                "version": RESULT_VERSION,
                "config": self.config,
                "prompts": self.prompts,
                "seconds": self.seconds,
                "per_layer": {
                    k: [None if not np.isfinite(x) else float(x) for x in v] for k, v in self.metrics.as_dict().items()
                },
                "sweep": self.sweep.to_dict(),
                "pca_layer": self.pca.layer,
                "steering": None if self.steering is None else self.steering.to_dict(),
                "positions": None if self.positions is None else self.positions.to_dict(),
                "selection": None if self.selection is None else self.selection.to_dict(),
                "components": None if self.components is None else self.components.to_dict(),
                "spread": None if self.spread is None else self.spread.to_dict(),
                "selected_layers": self.layer_map.selected_layers,
            },
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> AnalysisResult:
        folder = Path(folder)
        path = folder / "metrics.json"
        if not path.exists():
            raise ConfigError(f"{folder} holds no analysis (no metrics.json); run `interp analyze` first")
        data = json.loads(path.read_text())
        if data.get("version") not in READABLE_RESULTS:
            raise ConfigError(
                f"{path}: analysis format {data.get('version')!r} is not {RESULT_VERSION}; rerun the analysis"
            )
        arrays = {k: v.numpy() for k, v in load_file(str(folder / "analysis.safetensors")).items()}
        steering = data["steering"]

        def part(name, kind):
            return None if data.get(name) is None else kind.from_dict(data[name])

        maps = folder / "component_map.json"
        return cls(
            metrics=PairMetrics.from_dict(data["per_layer"]),
            sweep=CausalSweep.from_dict(data["sweep"]),
            layer_map=LayerMap.load(folder / "layer_map.json"),
            refusal_vectors=arrays["refusal_vectors"],
            pca=Projection(data["pca_layer"], arrays["pca_base"], arrays["pca_finetuned"], arrays["pca_labels"]),
            steering=None if steering is None else SteeringCheck(**steering),
            positions=part("positions", PositionMetrics),
            selection=part("selection", DirectionSelection),
            components=part("components", ComponentAttribution),
            component_map=LayerMap.load(maps) if maps.exists() else None,
            spread=part("spread", ScoreSpread),
            config=data["config"],
            prompts=data["prompts"],
            seconds=data["seconds"],
        )
