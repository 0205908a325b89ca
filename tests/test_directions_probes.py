"""Difference-in-means directions and layer probes on synthetic Gaussian data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from interp.errors import ConfigError, NonFiniteActivationError
from interp.measures.directions import DiffInMeans, cosine, separation
from interp.measures.probes import LayerProbes

RNG = np.random.default_rng(0)
N, D = 200, 24


def two_class_data(shift: np.ndarray, layers: int = 3):
    """Layer 0: classes differ by ``shift``; layer 1: by ``2 * shift``; layer 2: not at all."""
    y = np.repeat([1, 0], N // 2)
    X = RNG.normal(size=(N, layers, D))
    X[y == 1, 0] += shift
    X[y == 1, 1] += 2 * shift
    return X, y


def test_diff_in_means_recovers_the_planted_direction():
    shift = np.zeros(D)
    shift[3], shift[7] = 3.0, -4.0  # norm 5
    X, y = two_class_data(shift)
    dim = DiffInMeans().fit(X, y)
    assert dim.directions_.shape == (3, D) and dim.norms_.shape == (3,)
    assert cosine(dim.directions_[:2], np.stack([shift, shift]))[0] > 0.98
    assert abs(dim.norms_[0] - 5) < 0.6 and abs(dim.norms_[1] - 10) < 0.6 and dim.norms_[2] < 1.5
    np.testing.assert_allclose(np.linalg.norm(dim.directions_, axis=1), 1.0)
    sep = separation(X, y, dim.directions_)
    assert sep[1] > sep[0] > 4 * sep[2]
    assert dim.project(X).shape == (N, 3)


def test_probes_decode_only_informative_layers_and_transfer_fails_when_the_signal_moves():
    shift = np.zeros(D)
    shift[0] = 2.0  # Bayes accuracy at layer 0: Phi(1) = 0.84; at layer 1: Phi(2) = 0.98
    X, y = two_class_data(shift)
    probes = LayerProbes(seed=0).fit(X, y)
    assert probes.cv_accuracy_[0] > 0.7 and probes.cv_accuracy_[1] > 0.95
    assert 0.3 < probes.cv_accuracy_[2] < 0.7 and probes.cv_auroc_[1] > 0.99
    moved = X.copy()
    moved[:, 1, 0], moved[:, 1, 1] = X[:, 1, 1], X[:, 1, 0]  # same information, another coordinate
    transfer = probes.score_layers(moved, y)
    assert transfer["accuracy"][1] < 0.7
    assert LayerProbes(seed=0).fit(moved, y).cv_accuracy_[1] > 0.95  # still decodable, differently


def test_fit_returns_self_and_bad_input_is_named():
    X, y = two_class_data(np.ones(D))
    assert isinstance(DiffInMeans().fit(X, y), DiffInMeans)
    with pytest.raises(ConfigError, match="both classes"):
        DiffInMeans().fit(X, np.ones(N, int))
    with pytest.raises(ConfigError, match="expected 200 labels"):
        DiffInMeans().fit(X, y[:-1])
    bad = X.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteActivationError):
        LayerProbes().fit(bad, y)
