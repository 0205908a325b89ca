"""Difference-in-means directions per layer (Arditi et al. 2024), with scikit-learn's contract.

Inputs are activations at one token position: ``X[sample, layer, d_model]`` (a 2-D ``[sample, d_model]``
is treated as a single layer) and binary labels ``y[sample]`` (1 = positive class, e.g. harmful).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError, NonFiniteActivationError


def as_layers(X) -> np.ndarray:
    """``[sample, layer, d_model]`` float64 array from a tensor or array (2-D becomes one layer)."""
    X = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    if X.ndim == 2:
        X = X[:, None, :]
    if X.ndim != 3:
        raise ConfigError(f"expected activations [sample, layer, d_model], got shape {X.shape}")
    if not np.isfinite(X).all():
        raise NonFiniteActivationError("activations contain NaN or infinite values")
    return X.astype(np.float64)


def check_binary(y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ConfigError(f"expected {n} labels, got shape {y.shape}")
    classes = set(np.unique(y).tolist())
    if classes != {0, 1}:
        raise ConfigError(f"labels must contain both classes 0 and 1, got {sorted(classes)}")
    return y.astype(int)


class DiffInMeans:
    """Per layer: ``mean(X | y=1) - mean(X | y=0)``, its norm and its unit direction.

    Learned state: ``mean_pos_``, ``mean_neg_`` ``[layer, d_model]``; ``diff_`` ``[layer, d_model]``;
    ``norms_`` ``[layer]``; ``directions_`` ``[layer, d_model]`` (unit vectors).
    """

    def fit(self, X, y) -> DiffInMeans:
        X = as_layers(X)
        y = check_binary(y, X.shape[0])
        self.mean_pos_ = X[y == 1].mean(0)
        self.mean_neg_ = X[y == 0].mean(0)
        self.diff_ = self.mean_pos_ - self.mean_neg_
        self.norms_ = np.linalg.norm(self.diff_, axis=-1)
        self.directions_ = self.diff_ / np.maximum(self.norms_[:, None], 1e-12)
        self.n_layers_ = X.shape[1]
        return self

    def project(self, X, directions: np.ndarray | None = None) -> np.ndarray:
        """Scalar projection of each sample on each layer's direction: ``[sample, layer]``."""
        X = as_layers(X)
        directions = self.directions_ if directions is None else directions
        if X.shape[1:] != directions.shape:
            raise ConfigError(f"activations {X.shape[1:]} do not match directions {directions.shape}")
        return np.einsum("nld,ld->nl", X, directions)

    def transform(self, X) -> np.ndarray:
        return self.project(X)


def separation(X, y, directions: np.ndarray) -> np.ndarray:
    """Per layer: mean projection of class 1 minus class 0 along ``directions`` ``[layer, d_model]``."""
    X = as_layers(X)
    y = check_binary(y, X.shape[0])
    proj = np.einsum("nld,ld->nl", X, directions)
    return proj[y == 1].mean(0) - proj[y == 0].mean(0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[layer, d_model]`` arrays."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-12)
